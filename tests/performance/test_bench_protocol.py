"""Regression gate: the wire protocol's hot path (poolkit._protocol), per frame.

Every call is one CALL frame out and one RESULT frame back: the parent encodes the request
(pickle) and its frame, and feeds the reply's bytes to a FrameDecoder, which checks the header
and CRC-32 and cuts out the payload. Payloads: a trivial call (``neg(1)``) and a 1 KiB
argument. The decoder is also fed a chunk of 64 replies at once, as a pipelined worker's
output arrives.
"""

from __future__ import annotations

import operator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from poolkit import _protocol as proto

pytestmark = pytest.mark.benchmark(group="protocol")

PAYLOADS = {"small": 1, "1KiB": b"x" * 1024}


def _request(arg: object) -> bytes:
    return proto.encode_payload([operator.neg, [arg], {}], proto.Codec.PICKLE)


@pytest.mark.parametrize("size", list(PAYLOADS))
def test_encode_call(benchmark: BenchmarkFixture, size: str) -> None:
    """One CALL frame from a request: pickle the request, then build header and checksum."""
    arg = PAYLOADS[size]

    def encode() -> bytes:
        payload = proto.encode_payload([operator.neg, [arg], {}], proto.Codec.PICKLE)
        return proto.encode_frame(proto.FrameKind.CALL, 7, payload, proto.Codec.PICKLE)

    frame = benchmark(encode)
    assert len(frame) > proto.HEADER_SIZE


@pytest.mark.parametrize("size", list(PAYLOADS))
def test_decode_result(benchmark: BenchmarkFixture, size: str) -> None:
    """One RESULT frame's bytes into a value: header, checksum, then unpickle the payload."""
    value = PAYLOADS[size]
    data = proto.encode_frame(
        proto.FrameKind.RESULT, 7, proto.encode_payload(value, proto.Codec.PICKLE), proto.Codec.PICKLE
    )
    decoder = proto.FrameDecoder()

    def decode() -> object:
        [frame] = decoder.feed(data)
        return proto.decode_payload(frame.payload, frame.codec)

    assert benchmark(decode) == value


def test_decode_pipelined_chunk(benchmark: BenchmarkFixture) -> None:
    """64 small RESULT frames arriving in one read, as a pipelined worker's replies do."""
    one = proto.encode_frame(proto.FrameKind.RESULT, 7, _request(1), proto.Codec.PICKLE)
    chunk = one * 64
    decoder = proto.FrameDecoder()

    frames = benchmark(decoder.feed, chunk)
    assert len(frames) == 64
    assert decoder.buffered == 0
