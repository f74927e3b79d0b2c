"""The poolkit wire protocol: framing, frame kinds and payload codecs.

This module is imported by the worker runtime, so it must use only the standard library:
every import here is paid for at every worker start. It does no I/O; it turns frames into
bytes and bytes into frames. ``docs/protocol.md`` is the language-neutral specification;
this module is its reference implementation and the two must agree.

Why a fixed binary header rather than a pickled envelope: the header is read before
anything is trusted, so a worker written in another language (or a corrupted stream) can
never make the parent unpickle something it did not ask for, and a bad frame is detected
from its checksum instead of surfacing as an obscure unpickling error.

Header (22 bytes, network byte order)::

    offset size field
    0      2    magic       b"PK"
    2      1    version     PROTOCOL_VERSION
    3      1    kind        FrameKind
    4      2    flags       low 4 bits: payload codec (Codec); FLAG_TRACE, FLAG_TIMING,
                            FLAG_WALL_ONLY; other bits reserved, sent as 0
    6      8    call_id     unsigned; 0 for frames not about a call
    14     4    length      body length in bytes (header extensions + payload)
    18     4    checksum    CRC-32 of header bytes 0..17 followed by the body

Header extensions (telemetry). Two optional fixed-size blocks may open the body; a flag bit
says each is there, and they are counted in ``length`` and covered by the checksum. A pool
sets them only towards workers that announced the matching READY feature, so a worker that
knows nothing of them never sees one::

    FLAG_TRACE  (CALL)          26 bytes  version (0), trace_id (16), span_id (8), trace_flags (1):
                                          W3C trace context of the caller's span, so the worker
                                          side can continue the trace  [feature "trace_context"]
    FLAG_TIMING (CALL)           0 bytes  the pool asks for timings   [feature "timings"]
    FLAG_TIMING (RESULT, ERROR) 16 bytes  run_ns (8), cpu_ns (8): wall and process-CPU
                                          nanoseconds the worker spent on the call
    FLAG_WALL_ONLY (CALL, with FLAG_TIMING)  0 bytes  only run_ns is wanted: the worker may
                                          skip its CPU clock and send cpu_ns = CPU_UNKNOWN

A CALL carrying both has the trace block first. The codec bits describe the payload after them.
"""

from __future__ import annotations

import enum
import json
import pickle
import struct
import zlib
from typing import Any, NamedTuple

__all__ = [
    "CPU_UNKNOWN",
    "DEFAULT_MAX_FRAME_SIZE",
    "FLAG_TIMING",
    "FLAG_TRACE",
    "FLAG_WALL_ONLY",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "PROTOCOL_VERSION",
    "TIMING",
    "TRACE",
    "Codec",
    "Frame",
    "FrameDecoder",
    "FrameKind",
    "ProtocolViolation",
    "decode_payload",
    "encode_frame",
    "encode_payload",
    "split_timing",
    "split_trace",
    "traceparent",
]

MAGIC = b"PK"
PROTOCOL_VERSION = 1
HEADER = struct.Struct("!2sBBHQII")
HEADER_SIZE = HEADER.size  # 22
_PREFIX = struct.Struct("!2sBBHQI")  # the header without its checksum
_pack_prefix, _pack_checksum, _crc32 = _PREFIX.pack, struct.Struct("!I").pack, zlib.crc32
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
_CODEC_MASK = 0x000F
_CODECS = frozenset({0, 1})
FLAG_TRACE = 0x0010
FLAG_TIMING = 0x0020
# With FLAG_TIMING on a CALL: the parent wants only the wall time (its scheduling), not the
# CPU time (call events). The process CPU clock is a system call (~0.6 us), read twice per
# call; a worker may skip it and send CPU_UNKNOWN. Old workers ignore the bit (reserved bits
# are ignored on receipt) and measure anyway, which is as correct.
FLAG_WALL_ONLY = 0x0040
CPU_UNKNOWN = 0xFFFF_FFFF_FFFF_FFFF  # cpu_ns of a TIMING block whose worker did not measure it
TRACE = struct.Struct("!B16s8sB")  # version, trace_id, span_id, trace_flags
TIMING = struct.Struct("!QQ")  # run_ns, cpu_ns


class FrameKind(enum.IntEnum):
    """What a frame means. Direction: p = parent (pool), w = worker."""

    READY = 1  # w->p  JSON handshake: {"pid", "protocol", "worker_id", ...}
    STARTUP_FAILED = 2  # w->p  JSON {"type", "message", "traceback"}: target failed to load
    CALL = 3  # p->w  codec payload [target, args, kwargs]
    RESULT = 4  # w->p  codec payload: the return value
    ERROR = 5  # w->p  JSON {"type", "message", "traceback", "phase"}
    CANCEL = 6  # p->w  empty: skip this call if it has not started
    CANCELLED = 7  # w->p  empty: the call was skipped and never ran
    LOG = 8  # w->p  JSON {"stream": "stdout"|"stderr", "line": str}
    SHUTDOWN = 9  # p->w  empty: finish what was sent, then exit 0
    PING = 10  # p->w  empty: heartbeat request
    PONG = 11  # w->p  heartbeat reply, same call_id as the PING; optional JSON {"rss": bytes}
    SESSION_END = 12  # p->w  JSON {"key": str | int}: drop that session's state


class Codec(enum.IntEnum):
    """Payload encodings. JSON is the language-neutral one; pickle is Python's default."""

    JSON = 0
    PICKLE = 1


class ProtocolViolation(ValueError):
    """Bytes on the wire that are not a valid frame: bad magic, version, kind, checksum or size.

    ``frames`` holds the valid frames that arrived in the same chunk *before* the bad one: they
    are genuine (each passed its checksum) and a receiver should act on them before closing
    the stream, so a good reply is never lost because garbage followed it.
    """

    def __init__(self, message: str, frames: list[Frame] | None = None) -> None:
        super().__init__(message)
        self.frames: list[Frame] = frames or []


_KINDS: dict[int, FrameKind] = {int(k): k for k in FrameKind}
_CODEC_OF: dict[int, Codec] = {int(c): c for c in Codec}


class Frame(NamedTuple):
    kind: FrameKind
    call_id: int
    flags: int
    payload: bytes

    @property
    def codec(self) -> Codec:
        return _CODEC_OF[self.flags & _CODEC_MASK]


def encode_frame(
    kind: int,
    call_id: int,
    payload: bytes = b"",
    codec: int = Codec.JSON,
    flags: int = 0,
    blocks: bytes = b"",
) -> bytes:
    """Return one complete frame (header + body) as bytes. ``flags`` are the extension bits
    (FLAG_TRACE, FLAG_TIMING); their blocks, in order, are ``blocks``, or else ``payload``
    must already start with them. (``blocks`` spares a copy of the payload: the frame is
    joined from its parts once, not concatenated twice.)"""
    if codec not in _CODECS:
        raise ValueError(f"unknown payload codec {codec!r}")
    prefix = _pack_prefix(MAGIC, PROTOCOL_VERSION, kind, codec | flags, call_id, len(blocks) + len(payload))
    if blocks:
        checksum = _crc32(payload, _crc32(blocks, _crc32(prefix)))
        return b"".join((prefix, _pack_checksum(checksum), blocks, payload))
    return b"".join((prefix, _pack_checksum(_crc32(payload, _crc32(prefix))), payload))


def split_trace(payload: bytes) -> tuple[bytes, bytes]:
    """A FLAG_TRACE body: (the 26-byte trace block, the rest). Raises ProtocolViolation if short."""
    if len(payload) < TRACE.size:
        raise ProtocolViolation(f"FLAG_TRACE set, but the body has only {len(payload)} bytes")
    return payload[: TRACE.size], payload[TRACE.size :]


def split_timing(payload: bytes) -> tuple[int, int | None, bytes]:
    """A FLAG_TIMING reply body: (run_ns, cpu_ns or None when CPU_UNKNOWN, the rest). Raises
    ProtocolViolation if short."""
    if len(payload) < TIMING.size:
        raise ProtocolViolation(f"FLAG_TIMING set, but the body has only {len(payload)} bytes")
    run_ns, cpu_ns = TIMING.unpack_from(payload)
    return run_ns, None if cpu_ns == CPU_UNKNOWN else cpu_ns, payload[TIMING.size :]


def traceparent(block: bytes) -> str:
    """The W3C ``traceparent`` header value of a 26-byte trace block."""
    _version, trace_id, span_id, trace_flags = TRACE.unpack(block)
    return f"00-{trace_id.hex()}-{span_id.hex()}-{trace_flags:02x}"


def encode_payload(obj: Any, codec: int) -> bytes:
    """Encode a payload; raises whatever the codec raises (the caller classifies it).

    JSON refuses NaN and infinities (``allow_nan=False``): they are not JSON (RFC 8259) and a
    worker in another language could not parse them.
    """
    if codec == Codec.PICKLE:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    if codec == Codec.JSON:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    raise ValueError(f"unknown payload codec {codec!r}")


def decode_payload(data: bytes, codec: int) -> Any:
    """Decode a payload; raises whatever the codec raises (the caller classifies it)."""
    if codec == Codec.PICKLE:
        return pickle.loads(data)
    if codec == Codec.JSON:
        return json.loads(data)
    raise ValueError(f"unknown payload codec {codec!r}")


_tuple_new = tuple.__new__


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole frames back.

    Kept deliberately simple and allocation-light because it sits on the hot path of every
    call: one growing bytearray, one offset, ``struct.unpack_from`` on the header.
    """

    __slots__ = ("_buf", "_max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._buf = bytearray()
        self._max_frame_size = max_frame_size

    @property
    def buffered(self) -> int:
        """Bytes received that are not yet part of a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data`` and return every frame now complete, in order.

        Raises ProtocolViolation on the first invalid header or checksum; the stream is
        then unusable (there is no way to resynchronise a framed byte stream safely).
        """
        buf = self._buf
        frames: list[Frame] = []
        if buf:
            buf += data
            try:
                offset = self._parse(buf, frames)
            except ProtocolViolation as exc:
                exc.frames = frames
                raise
            if offset:
                del buf[:offset]
            return frames
        # Nothing held back: parse ``data`` where it is. A chunk is most often whole frames
        # (one reply), and each payload is then one copy, not three (into the buffer, out
        # of it, and the buffer's shift); only a partial frame at the end is kept.
        try:
            offset = self._parse(data, frames)
        except ProtocolViolation as exc:
            buf += data
            exc.frames = frames
            raise
        if offset < len(data):
            buf += memoryview(data)[offset:]
        return frames

    def _parse(self, buf: bytes | bytearray, frames: list[Frame]) -> int:
        """Append the whole frames at the start of ``buf`` to ``frames``; return the bytes they
        took."""
        offset = 0
        end = len(buf)
        unpack = HEADER.unpack_from
        while end - offset >= HEADER_SIZE:
            magic, version, kind, flags, call_id, length, checksum = unpack(buf, offset)
            if magic != MAGIC:
                raise ProtocolViolation(f"bad magic {bytes(magic)!r} (expected {MAGIC!r})")
            if version != PROTOCOL_VERSION:
                raise ProtocolViolation(
                    f"unsupported protocol version {version} (expected {PROTOCOL_VERSION})"
                )
            if length > self._max_frame_size:
                raise ProtocolViolation(
                    f"frame of {length} bytes exceeds the maximum frame size of {self._max_frame_size} bytes"
                )
            stop = offset + HEADER_SIZE + length
            if stop > end:
                break
            payload = bytes(buf[offset + HEADER_SIZE : stop])
            actual = zlib.crc32(payload, zlib.crc32(buf[offset : offset + HEADER_SIZE - 4]))
            if actual != checksum:
                raise ProtocolViolation(
                    f"checksum mismatch on frame kind={kind} call_id={call_id}: "
                    f"header says {checksum:#010x}, bytes give {actual:#010x}"
                )
            frame_kind = _KINDS.get(kind)  # FrameKind(kind) costs a Python-level call per frame
            if frame_kind is None:
                raise ProtocolViolation(f"unknown frame kind {kind}")
            if flags & _CODEC_MASK not in _CODECS:
                raise ProtocolViolation(f"unknown payload codec {flags & _CODEC_MASK}")
            # tuple.__new__ is what Frame() runs, less its Python-level __new__ frame
            frames.append(_tuple_new(Frame, (frame_kind, call_id, flags, payload)))
            offset = stop
        return offset
