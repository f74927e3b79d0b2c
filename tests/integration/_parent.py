"""A parent process for the orphan tests: starts a pool, prints its worker pids as JSON, then
does what argv says. Run as ``python -m integration._parent BACKEND MODE``.

Modes: "wait" (block until killed), or "<fault>-<boundary>" where the fault kills this parent
process while it pickles a call (boundary "pickle") or unpickles a result ("unpickle").
"""

from __future__ import annotations

import json
import sys

import anyio

from integration import _faults
from poolkit import Pool


async def main(mode: str) -> None:
    async with Pool(min_workers=2) as pool:
        pids = [w.pid for w in pool.statistics().workers]
        print(json.dumps(pids), flush=True)
        if mode == "wait":
            await anyio.sleep_forever()
        fault, boundary = mode.split("-")
        if boundary == "pickle":
            await pool.call(_faults.accept, _faults.AT_PICKLE[fault]())
        else:
            await pool.call(_faults.return_instance, "unpickle", fault)
        print("survived", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[2], backend=sys.argv[1])
