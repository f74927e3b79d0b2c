"""The raw-pipe reference's child process: ``python -m benchmarks._peers.rawchild``.

As little as a worker can be: read length-prefixed frames from stdin, each a pickled
``(function, args)``; run it; write ``(ok, value)`` back, pickled in a frame with the same call
id. Everything complete in one read is answered in one write. The header is 12 bytes
(body length, call id), no checksum: see rawpipe.py.
"""

from __future__ import annotations

import os
import pickle
import struct

HEADER = struct.Struct("<IQ")  # body length, call id; id 0 is the READY frame


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main() -> None:
    rfd, wfd = os.dup(0), os.dup(1)
    os.dup2(2, 1)  # a print() in a target must not corrupt the frame stream
    write_all(wfd, HEADER.pack(0, 0))  # READY
    size = HEADER.size
    unpack = HEADER.unpack_from
    pack = HEADER.pack
    loads, dumps = pickle.loads, pickle.dumps
    buf = bytearray()
    while True:
        chunk = os.read(rfd, 1 << 16)
        if not chunk:
            return
        buf += chunk
        out = bytearray()
        offset, end = 0, len(buf)
        while end - offset >= size:
            length, call_id = unpack(buf, offset)
            stop = offset + size + length
            if stop > end:
                break
            fn, args = loads(memoryview(buf)[offset + size : stop])
            try:
                reply = (True, fn(*args))
            except Exception as exc:
                reply = (False, exc)
            body = dumps(reply, 5)
            out += pack(len(body), call_id)
            out += body
            offset = stop
        if offset:
            del buf[:offset]
        if out:
            write_all(wfd, out)


if __name__ == "__main__":
    main()
