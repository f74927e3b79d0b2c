"""A Python worker behind a shell wrapper, for tests/integration/test_orphans.py.

Run as ``sh -c 'python -m integration._wrapped_worker "$0"; :' SPEC`` (``WorkerSpec.command``
appends the spec as the last argument, the shell's ``$0``). The ``; :`` keeps the shell from
exec'ing its last command, so the shell is the process the pool started and this worker is
its child, as with any wrapper script. The spec's parent is the pool, not the shell, so this
drops the runtime's parent-death ties (they would make the worker die with the shell, which a
non-Python worker behind a wrapper would not do); EOF on its input still ends it when idle.
"""

from __future__ import annotations

import json
import sys

from poolkit.worker._runtime import main

if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    spec.update(parent_pid=None, parent_death_signal=False)
    sys.exit(main([json.dumps(spec)]))
