"""A poolkit worker that does not use poolkit: proof that the protocol is language-neutral.

Everything here is written from docs/protocol.md alone, with nothing but the standard library: its
own header packing, its own CRC-32 check, JSON payloads only. If this file and a Go or Rust port of
it can serve a pool, so can any worker that follows the spec. tests/unit/test_protocol.py checks
that its frames are byte-identical to poolkit's own.

Run as ``python examples/json_worker.py '{"worker_id": "w1"}'`` (the pool appends the spec
argument); use it with ``WorkerSpec(command=[sys.executable, "examples/json_worker.py"],
codec="json")``. Targets are looked up in a table, as a non-Python worker would do:
``math:add``, ``math:mul``, ``text:upper``, ``sys:getpid`` and ``fail:raise``.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib

MAGIC, VERSION, JSON_CODEC = b"PK", 1, 0
PREFIX = struct.Struct("!2sBBHQI")  # header bytes 0..17: magic, version, kind, flags, call_id, length
HEADER_SIZE = PREFIX.size + 4  # + the CRC-32
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
READY, STARTUP_FAILED, CALL, RESULT, ERROR, CANCEL, CANCELLED, LOG, SHUTDOWN, PING, PONG, SESSION_END = range(
    1, 13
)
EXIT_OK, EXIT_STARTUP_FAILED, EXIT_PROTOCOL = 0, 3, 4


class ProtocolViolation(Exception):
    """The input stream is not valid protocol; the only safe reaction is to exit (code 4)."""


def encode_frame(kind: int, call_id: int, payload: bytes = b"", codec: int = JSON_CODEC) -> bytes:
    prefix = PREFIX.pack(MAGIC, VERSION, kind, codec & 0x000F, call_id, len(payload))
    return prefix + struct.pack("!I", zlib.crc32(prefix + payload)) + payload


def decode_frames(buf: bytearray, max_frame_size: int) -> list[tuple[int, int, int, bytes]]:
    """Remove every complete frame from the front of ``buf``; return (kind, call_id, codec, payload)."""
    frames = []
    while len(buf) >= HEADER_SIZE:
        magic, version, kind, flags, call_id, length = PREFIX.unpack_from(buf)
        if magic != MAGIC or version != VERSION:
            raise ProtocolViolation(f"bad magic {bytes(magic)!r} or version {version}")
        if length > max_frame_size:
            raise ProtocolViolation(f"frame of {length} bytes exceeds the limit of {max_frame_size}")
        if len(buf) < HEADER_SIZE + length:
            break  # wait for the rest of the payload
        (checksum,) = struct.unpack_from("!I", buf, PREFIX.size)
        payload = bytes(buf[HEADER_SIZE : HEADER_SIZE + length])
        if zlib.crc32(bytes(buf[: PREFIX.size]) + payload) != checksum:
            raise ProtocolViolation(f"checksum mismatch on frame kind={kind} call_id={call_id}")
        if kind not in (CALL, CANCEL, SHUTDOWN, PING, SESSION_END) or flags & 0x000F > 1:
            raise ProtocolViolation(f"unexpected frame kind {kind} / codec {flags & 0x000F}")
        frames.append((kind, call_id, flags & 0x000F, payload))
        del buf[: HEADER_SIZE + length]
    return frames


def to_json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _numbers(args: list[object]) -> list[int | float]:
    if not all(isinstance(a, int | float) for a in args):
        raise TypeError(f"expected numbers, got {args!r}")
    return [a for a in args if isinstance(a, int | float)]


def _add(args: list[object], kwargs: dict[str, object]) -> object:
    return sum(_numbers(args))


def _mul(args: list[object], kwargs: dict[str, object]) -> object:
    product: int | float = 1
    for n in _numbers(args):
        product *= n
    return product


def _upper(args: list[object], kwargs: dict[str, object]) -> object:
    (text,) = args
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {text!r}")
    return text.upper()


def _getpid(args: list[object], kwargs: dict[str, object]) -> object:
    return os.getpid()


def _fail(args: list[object], kwargs: dict[str, object]) -> object:
    raise RuntimeError(f"fail:raise was called with {args!r}")


#: The target strings mean whatever the worker says they mean: here, keys of a function table.
TARGETS = {
    "math:add": _add,
    "math:mul": _mul,
    "text:upper": _upper,
    "sys:getpid": _getpid,
    "fail:raise": _fail,
}


def describe(exc: BaseException) -> dict[str, str]:
    """The {type, message, traceback} of an exception (a minimal traceback: stdlib imports only)."""
    lines = ["Traceback (most recent call last):"]
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        lines.append(f'  File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}')
        tb = tb.tb_next
    message = str(exc)
    lines.append(f"{type(exc).__name__}: {message}")
    return {"type": type(exc).__name__, "message": message, "traceback": "\n".join(lines)}


def answer_call(call_id: int, codec: int, payload: bytes, max_frame_size: int) -> bytes:
    """Run one CALL; return its RESULT or ERROR frame."""
    phase = "decoding"
    try:
        if codec != JSON_CODEC:
            raise TypeError("this worker speaks only the JSON codec")
        call = json.loads(payload)
        if not (isinstance(call, list) and len(call) in (3, 4) and isinstance(call[0], str)):
            raise TypeError("a CALL payload is [target, args, kwargs] or [target, args, kwargs, session]")
        target, args, kwargs = call[0], call[1], call[2]
        if not (isinstance(args, list) and isinstance(kwargs, dict)):
            raise TypeError("args must be an array and kwargs an object")
        phase = "resolving"
        if target not in TARGETS:
            raise LookupError(f"unknown target {target!r}")
        phase = "running"
        value = TARGETS[target](args, kwargs)
        phase = "encoding"
        result = to_json(value)
    except Exception as exc:
        return encode_frame(ERROR, call_id, to_json({**describe(exc), "phase": phase}))
    if len(result) > max_frame_size:  # the one error type the parent knows by name
        message = f"result of {len(result)} bytes exceeds max_frame_size={max_frame_size} bytes"
        body = {"type": "poolkit.PayloadTooLarge", "message": message, "traceback": "", "phase": phase}
        return encode_frame(ERROR, call_id, to_json({**body, "size": len(result), "limit": max_frame_size}))
    return encode_frame(RESULT, call_id, result)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def serve(fd_in: int, fd_out: int, spec_text: str) -> int:
    """Handshake, then answer the frames read from ``fd_in`` until SHUTDOWN or EOF; return the exit code."""
    try:
        spec = json.loads(spec_text)
        worker_id = str(spec["worker_id"])
        max_frame_size = int(spec.get("max_frame_size", DEFAULT_MAX_FRAME_SIZE))
    except Exception as exc:
        write_all(fd_out, encode_frame(STARTUP_FAILED, 0, to_json(describe(exc))))
        return EXIT_STARTUP_FAILED
    ready = {"pid": os.getpid(), "protocol": VERSION, "worker_id": worker_id, "runtime": "python-standalone"}
    write_all(fd_out, encode_frame(READY, 0, to_json(ready)))
    buf = bytearray()
    while chunk := os.read(fd_in, 1 << 16):
        buf += chunk
        try:
            frames = decode_frames(buf, max_frame_size)
        except ProtocolViolation as exc:
            print(f"json_worker {worker_id}: protocol violation: {exc}", file=sys.stderr)
            return EXIT_PROTOCOL
        # Everything read so far is queued; a CANCEL for a queued, not yet started CALL skips it.
        queued = {call_id for kind, call_id, _, _ in frames if kind == CALL}
        cancelled = {call_id for kind, call_id, _, _ in frames if kind == CANCEL and call_id in queued}
        for kind, call_id, codec, payload in frames:
            if kind == CALL and call_id in cancelled:
                write_all(fd_out, encode_frame(CANCELLED, call_id))
            elif kind == CALL:
                write_all(fd_out, answer_call(call_id, codec, payload, max_frame_size))
            elif kind == PING:
                write_all(fd_out, encode_frame(PONG, call_id))
            elif kind == SHUTDOWN:
                return EXIT_OK  # every CALL before it has been answered
            # CANCEL of a call that already ran (or of an unknown id): nothing to do
    if buf:
        print(f"json_worker {worker_id}: input ended in the middle of a frame", file=sys.stderr)
        return EXIT_PROTOCOL
    return EXIT_OK  # EOF: the parent closed our stdin or died


if __name__ == "__main__":
    sys.stdout = sys.stderr  # fd 1 is the frame stream: a stray print() must not reach it
    try:
        sys.exit(serve(0, 1, sys.argv[1] if len(sys.argv) > 1 else "{}"))
    except BrokenPipeError:
        sys.exit(EXIT_OK)  # the parent is gone
