"""The wire protocol: frames, the incremental decoder, payload codecs, and agreement with the spec.

Two implementations of docs/protocol.md are checked against each other: poolkit._protocol (the
reference) and examples/json_worker.py (written from the spec, without poolkit).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, Protocol, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolkit._protocol import (
    CPU_UNKNOWN,
    DEFAULT_MAX_FRAME_SIZE,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    PROTOCOL_VERSION,
    TIMING,
    Codec,
    Frame,
    FrameDecoder,
    FrameKind,
    ProtocolViolation,
    decode_payload,
    encode_frame,
    encode_payload,
    split_timing,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_WORKER = ROOT / "examples" / "json_worker.py"
SPEC = ROOT / "docs" / "protocol.md"

kinds = st.sampled_from(FrameKind)
codecs = st.sampled_from(Codec)
call_ids = st.integers(min_value=0, max_value=2**64 - 1)
payloads = st.binary(max_size=256)
frame_specs = st.tuples(kinds, call_ids, payloads, codecs)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


def _frame(kind: FrameKind, call_id: int, payload: bytes, codec: Codec) -> Frame:
    """The Frame a decoder must return for encode_frame(kind, call_id, payload, codec)."""
    return Frame(kind, call_id, int(codec), payload)


# --------------------------------------------------------------------------- frames


@pytest.mark.parametrize("kind", list(FrameKind), ids=lambda k: k.name)
@pytest.mark.parametrize("codec", list(Codec), ids=lambda c: c.name)
def test_every_kind_round_trips(kind: FrameKind, codec: Codec) -> None:
    """Every frame kind, in every codec, comes out of FrameDecoder exactly as encode_frame put it in."""
    payload = b'{"x":[1,2,3]}'
    decoder = FrameDecoder()
    frames = decoder.feed(encode_frame(kind, 12345, payload, codec))
    assert frames == [_frame(kind, 12345, payload, codec)]
    assert frames[0].kind is kind
    assert frames[0].codec is codec
    assert decoder.buffered == 0


@given(frame_specs, payloads, st.integers(min_value=0, max_value=0xFFF0).map(lambda f: f & ~0xF))
def test_extension_blocks_given_apart_make_the_same_frame_as_in_the_payload(
    spec: tuple[FrameKind, int, bytes, Codec], blocks: bytes, flags: int
) -> None:
    """``blocks`` is only a way to pass the extension blocks without copying the payload: the
    bytes on the wire are those of the blocks written at the start of the payload."""
    kind, call_id, payload, codec = spec
    joined = encode_frame(kind, call_id, payload, codec, flags, blocks)
    assert joined == encode_frame(kind, call_id, blocks + payload, codec, flags)
    assert FrameDecoder().feed(joined) == [Frame(kind, call_id, int(codec) | flags, blocks + payload)]


@given(specs=st.lists(frame_specs, max_size=8), data=st.data())
def test_any_chunking_of_a_stream_decodes_to_the_same_frames(
    specs: list[tuple[FrameKind, int, bytes, Codec]], data: st.DataObject
) -> None:
    """Frames concatenated into one stream and fed in arbitrary chunks decode to the same frames, in order."""
    stream = b"".join(encode_frame(kind, call_id, payload, codec) for kind, call_id, payload, codec in specs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts"))
    decoder = FrameDecoder()
    decoded: list[Frame] = []
    start = 0
    for stop in [*cuts, len(stream)]:
        decoded += decoder.feed(stream[start:stop])
        start = stop
    assert decoded == [_frame(*spec) for spec in specs]
    assert decoder.buffered == 0


@given(specs=st.lists(frame_specs, min_size=1, max_size=6), data=st.data())
def test_frames_never_share_memory_with_the_chunk_they_came_in(
    specs: list[tuple[FrameKind, int, bytes, Codec]], data: st.DataObject
) -> None:
    """Chunks read into one reused buffer (as ``readinto`` would) and passed as a memoryview or
    a bytearray decode to frames whose payloads are ``bytes`` of their own: overwriting the
    buffer afterwards changes none of them, nor what the decoder holds of a partial frame.
    (The decoder parses a chunk in place when it holds nothing back.)"""
    stream = b"".join(encode_frame(kind, call_id, payload, codec) for kind, call_id, payload, codec in specs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6), label="cuts"))
    as_view = data.draw(st.booleans(), label="memoryview")
    reused = bytearray(len(stream))
    decoder = FrameDecoder()
    decoded: list[Frame] = []
    start = 0
    for stop in [*cuts, len(stream)]:
        n = stop - start
        reused[:n] = stream[start:stop]
        chunk = memoryview(reused)[:n] if as_view else reused[:n]
        decoded += decoder.feed(chunk)  # type: ignore[arg-type]
        reused[:] = b"\xff" * len(reused)  # the next read overwrites it
        if isinstance(chunk, bytearray):
            chunk[:] = b"\xff" * n
        start = stop
    assert decoded == [_frame(*spec) for spec in specs]
    assert all(type(frame.payload) is bytes for frame in decoded)
    assert decoder.buffered == 0


def _flip(frame: bytes, bit: int) -> bytes:
    corrupted = bytearray(frame)
    corrupted[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(corrupted)


def _check_flipped_bit_is_detected(frame: bytes, bit: int) -> None:
    """Feed ``frame`` with ``bit`` flipped; assert the decoder rejects it for the right reason.

    The one corruption that cannot be detected from the bytes at hand is a length made larger
    (but within the limit): the decoder then rightly waits for payload bytes that never come.
    A real stream ends there (EOF) and the reader reports a truncated frame.
    """
    corrupted = _flip(frame, bit)
    byte = bit // 8
    (old_length,) = struct.unpack_from("!I", frame, 14)
    (new_length,) = struct.unpack_from("!I", corrupted, 14)
    decoder = FrameDecoder()
    if byte in (0, 1):
        expected = "bad magic"
    elif byte == 2:
        expected = "unsupported protocol version"
    elif new_length > DEFAULT_MAX_FRAME_SIZE:
        expected = "exceeds the maximum frame size"
    elif new_length > old_length:
        assert decoder.feed(corrupted) == []
        assert decoder.buffered == len(frame)
        return
    else:  # kind, flags, call_id, a shorter length, the checksum itself, or the payload
        expected = "checksum mismatch"
    with pytest.raises(ProtocolViolation, match=expected):
        decoder.feed(corrupted)


def test_every_single_bit_flip_in_a_frame_is_detected() -> None:
    """Flipping any one bit of a CALL frame (all 22 header bytes and the payload) never yields a frame."""
    frame = encode_frame(FrameKind.CALL, 0x0102030405060708, b'["math:add",[1,2],{}]', Codec.JSON)
    for bit in range(len(frame) * 8):
        _check_flipped_bit_is_detected(frame, bit)


@given(spec=frame_specs, data=st.data())
def test_a_flipped_bit_anywhere_is_detected(
    spec: tuple[FrameKind, int, bytes, Codec], data: st.DataObject
) -> None:
    """For any frame, a flipped bit in header or payload raises ProtocolViolation (or, in the length
    field only, leaves the decoder waiting for bytes); it never decodes to a frame."""
    frame = encode_frame(*spec)
    bit = data.draw(st.integers(0, len(frame) * 8 - 1), label="bit")
    _check_flipped_bit_is_detected(frame, bit)


def test_bad_magic_is_rejected() -> None:
    """A header that does not start with b"PK" is rejected as soon as the 22 header bytes are in."""
    frame = b"XX" + encode_frame(FrameKind.PING, 1)[2:]
    with pytest.raises(ProtocolViolation, match=r"bad magic b'XX'"):
        FrameDecoder().feed(frame)


def test_other_protocol_version_is_rejected() -> None:
    """A frame of another protocol version is rejected, even with a valid checksum."""
    prefix = struct.pack("!2sBBHQI", MAGIC, PROTOCOL_VERSION + 1, FrameKind.PING, 0, 1, 0)
    frame = prefix + zlib.crc32(prefix).to_bytes(4, "big")
    with pytest.raises(ProtocolViolation, match=r"unsupported protocol version 2 \(expected 1\)"):
        FrameDecoder().feed(frame)


@pytest.mark.parametrize("kind", [0, 13, 255])
def test_unknown_kind_is_rejected(kind: int) -> None:
    """A well-formed frame (valid checksum) of a kind not in FrameKind is rejected."""
    with pytest.raises(ProtocolViolation, match=f"unknown frame kind {kind}"):
        FrameDecoder().feed(encode_frame(kind, 1, b"{}"))


@pytest.mark.parametrize("codec", range(2, 16))
def test_unknown_codec_is_rejected(codec: int) -> None:
    """A well-formed frame whose flags name a codec other than JSON (0) or pickle (1) is rejected
    by the decoder, and the encoder refuses to produce one."""
    prefix = struct.pack("!2sBBHQI", MAGIC, PROTOCOL_VERSION, FrameKind.RESULT, codec, 1, 2)
    frame = prefix + zlib.crc32(b"{}", zlib.crc32(prefix)).to_bytes(4, "big") + b"{}"
    with pytest.raises(ProtocolViolation, match=f"unknown payload codec {codec}"):
        FrameDecoder().feed(frame)
    with pytest.raises(ValueError, match="unknown payload codec"):
        encode_frame(FrameKind.RESULT, 1, b"{}", codec)


def test_valid_frames_before_a_corrupt_one_are_kept() -> None:
    """When a good frame and a corrupt one arrive in one chunk, the violation carries the good
    frame, so a receiver can deliver a genuine reply before closing the stream."""
    good = encode_frame(FrameKind.RESULT, 1, b"1")
    bad = bytearray(encode_frame(FrameKind.RESULT, 2, b"2"))
    bad[-1] ^= 0x01
    with pytest.raises(ProtocolViolation) as info:
        FrameDecoder().feed(good + bytes(bad))
    assert [(f.kind, f.call_id, f.payload) for f in info.value.frames] == [(FrameKind.RESULT, 1, b"1")]


def test_a_timing_block_without_cpu_time_reads_as_none() -> None:
    """cpu_ns = CPU_UNKNOWN (a worker asked for wall time only) is no CPU time; any other value,
    0 included, is one."""
    unknown = TIMING.pack(1500, CPU_UNKNOWN) + b"3"
    assert split_timing(unknown) == (1500, None, b"3")
    assert split_timing(TIMING.pack(1500, 0) + b"3") == (1500, 0, b"3")
    assert split_timing(TIMING.pack(1500, CPU_UNKNOWN - 1)) == (1500, CPU_UNKNOWN - 1, b"")


def test_reserved_flag_bits_are_ignored() -> None:
    """Flag bits 4-15 are reserved: a frame with them set still decodes, and its codec is the low 4 bits."""
    flags = 0xFFF0 | Codec.PICKLE
    prefix = struct.pack("!2sBBHQI", MAGIC, PROTOCOL_VERSION, FrameKind.RESULT, flags, 9, 2)
    frame = prefix + zlib.crc32(b"hi", zlib.crc32(prefix)).to_bytes(4, "big") + b"hi"
    (decoded,) = FrameDecoder().feed(frame)
    assert decoded.flags == flags
    assert decoded.codec is Codec.PICKLE
    assert decoded.payload == b"hi"


def test_oversize_length_is_rejected_from_the_header_alone() -> None:
    """A length over the limit raises as soon as the header arrives, naming the size and the limit."""
    frame = encode_frame(FrameKind.RESULT, 1, b"x" * 1025)
    decoder = FrameDecoder(max_frame_size=1024)
    with pytest.raises(
        ProtocolViolation, match=r"frame of 1025 bytes exceeds the maximum frame size of 1024 bytes"
    ):
        decoder.feed(frame[:HEADER_SIZE])


def test_frame_of_exactly_the_limit_is_accepted() -> None:
    """The limit is inclusive: a payload of exactly max_frame_size bytes decodes."""
    frame = encode_frame(FrameKind.RESULT, 1, b"x" * 1024)
    (decoded,) = FrameDecoder(max_frame_size=1024).feed(frame)
    assert len(decoded.payload) == 1024


def test_default_limit_is_64_mib() -> None:
    """The default frame size limit is the 64 MiB the spec states."""
    assert DEFAULT_MAX_FRAME_SIZE == 64 * 1024 * 1024 == 67_108_864


@given(spec=frame_specs, data=st.data())
def test_truncated_frame_yields_nothing_until_completed(
    spec: tuple[FrameKind, int, bytes, Codec], data: st.DataObject
) -> None:
    """Any proper prefix of a frame yields no frame and is kept; the rest of the bytes complete it."""
    frame = encode_frame(*spec)
    split = data.draw(st.integers(0, len(frame) - 1), label="split")
    decoder = FrameDecoder()
    assert decoder.feed(frame[:split]) == []
    assert decoder.buffered == split
    assert decoder.feed(frame[split:]) == [_frame(*spec)]
    assert decoder.buffered == 0


def test_frames_before_a_corrupt_one_in_an_earlier_read_are_delivered() -> None:
    """A corrupt frame does not take back frames already returned: the decoder fails at the bad one."""
    decoder = FrameDecoder()
    good = encode_frame(FrameKind.RESULT, 1, b"1")
    assert decoder.feed(good) == [_frame(FrameKind.RESULT, 1, b"1", Codec.JSON)]
    with pytest.raises(ProtocolViolation):
        decoder.feed(_flip(encode_frame(FrameKind.RESULT, 2, b"2"), 22 * 8))


# --------------------------------------------------------------------------- header layout


def test_header_is_the_documented_struct_layout_never_pickle() -> None:
    """Even for a pickled payload the header is exactly "!2sBBHQII" (magic, version, kind, flags,
    call_id, length, CRC-32 of header bytes 0..17 + payload); the pickle is only the payload."""
    payload = encode_payload({"a": (1, 2)}, Codec.PICKLE)
    frame = encode_frame(FrameKind.CALL, 2**64 - 1, payload, Codec.PICKLE)
    assert HEADER.format == "!2sBBHQII"
    assert HEADER_SIZE == 22
    crc = zlib.crc32(frame[:18] + payload)
    header = struct.unpack("!2sBBHQII", frame[:HEADER_SIZE])
    assert header == (b"PK", 1, FrameKind.CALL, Codec.PICKLE, 2**64 - 1, len(payload), crc)
    assert frame[:HEADER_SIZE] == struct.pack("!2sBBHQII", *header)
    assert frame[HEADER_SIZE:] == payload
    assert pickle.loads(frame[HEADER_SIZE:]) == {"a": (1, 2)}


# The worked examples of docs/protocol.md, section 9.
PING_7_HEX = "50 4b 01 0a 00 00 00 00 00 00 00 00 00 07 00 00 00 00 60 be a2 4c"
CALL_1_HEADER_HEX = "50 4b 01 03 00 00 00 00 00 00 00 00 00 01 00 00 00 15 34 85 9f 00"
CALL_1_PAYLOAD_HEX = "5b 22 6d 61 74 68 3a 61 64 64 22 2c 5b 31 2c 32 5d 2c 7b 7d 5d"
RESULT_1_HEX = "50 4b 01 04 00 00 00 00 00 00 00 00 00 01 00 00 00 01 fd 18 19 75 33"
SESSION_END_A_HEADER_HEX = "50 4b 01 0c 00 00 00 00 00 00 00 00 00 00 00 00 00 0b 3b 3b 71 4b"
SESSION_END_A_PAYLOAD_HEX = "7b 22 6b 65 79 22 3a 22 61 22 7d"


def test_worked_examples_in_the_spec_are_what_the_reference_encodes() -> None:
    """The hex dumps in docs/protocol.md section 9 (9.1 to 9.3) are byte for byte what
    encode_frame and encode_payload produce. (9.4: tests/unit/test_docs_telemetry.py; that the
    pool sends 9.3's SESSION_END: tests/unit/test_protocol_contract.py.)"""
    call = encode_frame(FrameKind.CALL, 1, encode_payload(["math:add", [1, 2], {}], Codec.JSON))
    result = encode_frame(FrameKind.RESULT, 1, encode_payload(3, Codec.JSON))
    session_end = encode_frame(FrameKind.SESSION_END, 0, encode_payload({"key": "a"}, Codec.JSON))
    assert encode_frame(FrameKind.PING, 7).hex(" ") == PING_7_HEX
    assert call.hex(" ") == f"{CALL_1_HEADER_HEX} {CALL_1_PAYLOAD_HEX}"
    assert result.hex(" ") == RESULT_1_HEX
    assert session_end.hex(" ") == f"{SESSION_END_A_HEADER_HEX} {SESSION_END_A_PAYLOAD_HEX}"
    spec = SPEC.read_text(encoding="utf-8")
    dumps = (
        PING_7_HEX,
        CALL_1_HEADER_HEX,
        CALL_1_PAYLOAD_HEX,
        RESULT_1_HEX,
        SESSION_END_A_HEADER_HEX,
        SESSION_END_A_PAYLOAD_HEX,
    )
    for dump in dumps:
        assert dump in spec
    assert '`{"key":"a"}`' in spec  # the payload as text, as 9.3 shows it
    assert zlib.crc32(b"123456789") == 0xCBF43926  # the check value the spec gives implementers


# --------------------------------------------------------------------------- payload codecs


@given(value=json_values)
def test_json_payload_round_trips(value: object) -> None:
    """Any JSON value survives encode_payload/decode_payload with the JSON codec, as compact UTF-8."""
    data = encode_payload(value, Codec.JSON)
    assert decode_payload(data, Codec.JSON) == value
    assert json.loads(data.decode("utf-8")) == value


def test_json_payload_is_compact_utf8() -> None:
    """JSON payloads have no insignificant whitespace and carry non-ASCII text as UTF-8, not escapes."""
    assert encode_payload({"k": ["é", 1]}, Codec.JSON) == '{"k":["é",1]}'.encode()


def test_json_payload_with_a_lone_surrogate_raises() -> None:
    """A string that is not valid Unicode cannot be JSON payload: encoding raises for the caller to classify."""
    with pytest.raises(UnicodeEncodeError):
        encode_payload("\ud800", Codec.JSON)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_json_payload_refuses_non_json_floats(value: float) -> None:
    """NaN and infinities are not JSON (RFC 8259), so a JSON payload must refuse them rather than send
    text a Go or Rust peer cannot parse."""
    try:
        encode_payload([value], Codec.JSON)
    except ValueError:
        return
    raise AssertionError(f"encode_payload emitted {encode_payload([value], Codec.JSON)!r}")


def test_pickle_payload_round_trips_python_objects() -> None:
    """The pickle codec carries what JSON cannot (tuples, sets, bytes, big ints) unchanged."""
    value: Any = {"t": (1, 2), "s": {3}, "b": b"\x00\xff", "n": 2**100, "f": 0.5}
    assert decode_payload(encode_payload(value, Codec.PICKLE), Codec.PICKLE) == value


# --------------------------------------------------------------------------- the standalone worker


class _JsonWorker(Protocol):
    """The parts of examples/json_worker.py the tests use."""

    ProtocolViolation: type[Exception]

    def encode_frame(self, kind: int, call_id: int, payload: bytes = ..., codec: int = ...) -> bytes: ...
    def decode_frames(self, buf: bytearray, max_frame_size: int) -> list[tuple[int, int, int, bytes]]: ...
    def serve(self, fd_in: int, fd_out: int, spec_text: str) -> int: ...


@functools.cache
def json_worker() -> _JsonWorker:
    """examples/json_worker.py, imported from its path (it is not part of the poolkit package)."""
    spec = importlib.util.spec_from_file_location("poolkit_example_json_worker", EXAMPLE_WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return cast(_JsonWorker, module)


def test_example_worker_imports_only_the_standard_library() -> None:
    """The standalone worker really is standalone: it imports json, os, struct, sys and zlib, not poolkit."""
    tree = ast.parse(EXAMPLE_WORKER.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported == {"__future__", "json", "os", "struct", "sys", "zlib"}


@pytest.mark.parametrize(
    ("kind", "call_id", "payload", "codec"),
    [
        (FrameKind.PING, 7, b"", Codec.JSON),
        (FrameKind.CALL, 1, b'["math:add",[1,2],{}]', Codec.JSON),
        (FrameKind.RESULT, 2**64 - 1, "ünïcode".encode(), Codec.JSON),
        (FrameKind.ERROR, 3, b'{"type":"E","message":"m","traceback":"","phase":"running"}', Codec.JSON),
        (FrameKind.RESULT, 4, b"\x80\x05K\x01.", Codec.PICKLE),
    ],
)
def test_example_worker_encodes_byte_identical_frames(
    kind: FrameKind, call_id: int, payload: bytes, codec: Codec
) -> None:
    """The spec's independent implementation (examples/json_worker.py) and the reference encode the
    same frame to the same bytes: both follow docs/protocol.md."""
    assert json_worker().encode_frame(kind, call_id, payload, codec) == encode_frame(
        kind, call_id, payload, codec
    )


@given(spec=frame_specs)
def test_example_worker_agrees_with_the_reference_on_any_frame(
    spec: tuple[FrameKind, int, bytes, Codec],
) -> None:
    """For any kind, call id, payload and codec, both encoders produce identical bytes."""
    assert json_worker().encode_frame(*spec) == encode_frame(*spec)


def test_example_worker_decodes_reference_frames_and_rejects_corrupt_ones() -> None:
    """The example's own decoder reads frames poolkit encodes, and refuses a corrupted checksum."""
    worker = json_worker()
    stream = encode_frame(FrameKind.CALL, 5, b"[]") + encode_frame(FrameKind.PING, 6)
    buf = bytearray(stream + stream[:10])
    assert worker.decode_frames(buf, DEFAULT_MAX_FRAME_SIZE) == [(3, 5, 0, b"[]"), (10, 6, 0, b"")]
    assert bytes(buf) == stream[:10]  # the partial frame stays buffered
    with pytest.raises(worker.ProtocolViolation):
        worker.decode_frames(bytearray(_flip(stream, 21 * 8)), DEFAULT_MAX_FRAME_SIZE)


def _run_json_worker(spec_text: str, stdin: bytes) -> tuple[int, list[Frame]]:
    """Run the example's serve() in this process over two pipes; return its exit code and frames.

    All input is written (and the pipe closed) before serve() starts, so the worker reads it in one
    go; both sides are far below the pipe buffer size, so nothing blocks.
    """
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        os.write(in_w, stdin)
        os.close(in_w)
        in_w = -1
        code = json_worker().serve(in_r, out_w, spec_text)
        os.close(out_w)
        out_w = -1
        output = b""
        while chunk := os.read(out_r, 65536):
            output += chunk
    finally:
        for fd in (in_r, in_w, out_r, out_w):
            if fd >= 0:
                os.close(fd)
    decoder = FrameDecoder()
    frames = decoder.feed(output)
    assert decoder.buffered == 0
    return code, frames


def _call(call_id: int, target: str, *args: object, codec: Codec = Codec.JSON) -> bytes:
    return encode_frame(FrameKind.CALL, call_id, encode_payload([target, list(args), {}], codec), codec)


def test_example_worker_serves_a_pipelined_session() -> None:
    """Against the reference decoder, the example worker handshakes, answers pipelined CALLs once each
    and in order (RESULT, ERROR with the right phase, CANCELLED for a cancelled queued call), answers
    PING with PONG, and exits 0 on SHUTDOWN."""
    stdin = b"".join(
        [
            _call(1, "math:add", 1, 2, 3.5),
            _call(2, "math:mul", 2, 3),
            _call(3, "text:upper", "héllo"),
            _call(4, "sys:getpid"),
            _call(5, "fail:raise", 1),
            _call(6, "no:such"),
            _call(7, "math:add", 1e308, 1e308),
            _call(8, "math:add", 1, codec=Codec.PICKLE),
            _call(9, "math:add", 1),
            encode_frame(FrameKind.CANCEL, 9),
            encode_frame(FrameKind.CANCEL, 999),
            encode_frame(FrameKind.PING, 42),
            encode_frame(FrameKind.SHUTDOWN, 0),
        ]
    )
    code, frames = _run_json_worker('{"worker_id": "w-17"}', stdin)
    assert code == 0
    ready, *answers = frames
    assert ready.kind is FrameKind.READY
    assert decode_payload(ready.payload, ready.codec) == {
        "pid": os.getpid(),
        "protocol": 1,
        "worker_id": "w-17",
        "runtime": "python-standalone",
    }
    assert [(f.kind, f.call_id) for f in answers] == [
        *[(FrameKind.RESULT, i) for i in (1, 2, 3, 4)],
        *[(FrameKind.ERROR, i) for i in (5, 6, 7, 8)],
        (FrameKind.CANCELLED, 9),
        (FrameKind.PONG, 42),
    ]
    assert [decode_payload(f.payload, f.codec) for f in answers[:4]] == [6.5, 6, "HÉLLO", os.getpid()]
    errors = [decode_payload(f.payload, Codec.JSON) for f in answers[4:8]]
    assert [e["phase"] for e in errors] == ["running", "resolving", "encoding", "decoding"]
    assert errors[0]["type"] == "RuntimeError"
    assert all(set(e) == {"type", "message", "traceback", "phase"} for e in errors)
    assert all(f.codec is Codec.JSON for f in frames)


def test_example_worker_reports_a_result_over_the_frame_limit() -> None:
    """A result larger than the spec's max_frame_size is not sent: the worker answers the documented
    ERROR {"type": "poolkit.PayloadTooLarge", "phase": "encoding", "size", "limit", ...} instead."""
    text = "\u0390" * 300  # 600 bytes of UTF-8; upper-cased, 3 code points of 2 bytes each
    assert len(encode_payload(text.upper(), Codec.JSON)) == 1802
    code, frames = _run_json_worker(
        '{"worker_id": "w", "max_frame_size": 1024}', _call(1, "text:upper", text)
    )
    assert code == 0
    _, answer = frames
    assert (answer.kind, answer.call_id) == (FrameKind.ERROR, 1)
    body = decode_payload(answer.payload, Codec.JSON)
    assert body["type"] == "poolkit.PayloadTooLarge"
    assert (body["phase"], body["size"], body["limit"]) == ("encoding", 1802, 1024)


def test_example_worker_exits_0_on_eof() -> None:
    """End of input at a frame boundary is a clean exit: code 0, after the handshake."""
    code, frames = _run_json_worker('{"worker_id": "w"}', encode_frame(FrameKind.PING, 1))
    assert code == 0
    assert [f.kind for f in frames] == [FrameKind.READY, FrameKind.PONG]


@pytest.mark.parametrize(
    "stdin",
    [b"garbage that is not a frame", encode_frame(FrameKind.PING, 1)[:-1], encode_frame(FrameKind.RESULT, 1)],
    ids=["bad-magic", "truncated", "wrong-direction"],
)
def test_example_worker_exits_4_on_a_protocol_violation(stdin: bytes) -> None:
    """Bytes that are not a valid parent-to-worker frame stream make the worker exit with code 4."""
    code, frames = _run_json_worker('{"worker_id": "w"}', stdin)
    assert code == 4
    assert [f.kind for f in frames] == [FrameKind.READY]


def test_example_worker_reports_a_startup_failure_and_exits_3() -> None:
    """A spec the worker cannot use yields one STARTUP_FAILED frame {type, message, traceback} and exit 3."""
    code, frames = _run_json_worker("not json", b"")
    assert code == 3
    (failed,) = frames
    assert failed.kind is FrameKind.STARTUP_FAILED
    body = decode_payload(failed.payload, Codec.JSON)
    assert set(body) == {"type", "message", "traceback"}
    assert body["type"] == "JSONDecodeError"
