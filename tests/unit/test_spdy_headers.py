"""SPDY/3 header blocks: dictionary, §7 V1-V4 and V7 vectors, shared zlib contexts, limits."""

from __future__ import annotations

import hashlib
import struct
import tracemalloc
import zlib

import pytest

from service.protocols.spdy import (
    DICTIONARY,
    FORBIDDEN_IN_SYN_REPLY,
    FORBIDDEN_IN_SYN_STREAM,
    MAX_BLOCK_SIZE,
    CompressionError,
    HeaderBlock,
    HeaderCompressor,
    HeaderDecompressor,
    HeaderError,
    decode_header_block,
    encode_header_block,
)

from .spdy_vectors import (
    CAPTURES,
    PORT_8080_DATA,
    PORT_8080_ERROR,
    V1_SHA256,
    V2_ERROR_BLOCK,
    V3_GO_BLOCK,
    V4_GO_BLOCK,
    V7_PY_BLOCK,
    V7_PY_DATA_BLOCK,
    V7_PY_EMPTY_1,
    V7_PY_EMPTY_2,
)


def block(*pairs: tuple[bytes, bytes], count: int | None = None) -> bytes:
    """An uncompressed block built by hand, so invalid content can be expressed."""
    parts = [struct.pack(">I", len(pairs) if count is None else count)]
    for name, value in pairs:
        parts += [struct.pack(">I", len(name)), name, struct.pack(">I", len(value)), value]
    return b"".join(parts)


def test_v1_dictionary() -> None:
    assert len(DICTIONARY) == 1423
    assert zlib.adler32(DICTIONARY) == 0xE3C6A7C2
    assert hashlib.sha256(DICTIONARY).hexdigest() == V1_SHA256
    assert DICTIONARY.startswith(bytes.fromhex("000000076f7074696f6e73"))


def test_v2_encode_and_decode() -> None:
    raw = bytes.fromhex(V2_ERROR_BLOCK)
    assert encode_header_block(PORT_8080_ERROR) == raw
    assert decode_header_block(raw) == dict(PORT_8080_ERROR)
    data_raw = raw.replace(b"\x00\x00\x00\x05error", b"\x00\x00\x00\x04data")
    assert encode_header_block(PORT_8080_DATA) == data_raw


@pytest.mark.parametrize(
    ("first", "second"), [(V3_GO_BLOCK, V4_GO_BLOCK), (V7_PY_BLOCK, V7_PY_DATA_BLOCK)]
)
def test_v3_v4_v7_decode_on_one_context(first: str, second: str) -> None:
    d = HeaderDecompressor()
    assert d.decompress(bytes.fromhex(first)) == bytes.fromhex(V2_ERROR_BLOCK)
    assert d.decode(bytes.fromhex(second)) == dict(PORT_8080_DATA)


def test_v4_on_a_fresh_context_fails() -> None:
    d = HeaderDecompressor()
    with pytest.raises(CompressionError) as info:
        d.decode(bytes.fromhex(V4_GO_BLOCK))
    assert "incorrect header check" in info.value.message
    assert (info.value.error_code, info.value.stream_id) == (1, None)
    # The context is now unusable, even for a block that would have been fine.
    with pytest.raises(CompressionError):
        d.decode(bytes.fromhex(V3_GO_BLOCK))


def test_v7_empty_blocks() -> None:
    d = HeaderDecompressor()
    assert d.decode(bytes.fromhex(V7_PY_EMPTY_1), FORBIDDEN_IN_SYN_REPLY) == {}
    assert d.decode(bytes.fromhex(V7_PY_EMPTY_2), FORBIDDEN_IN_SYN_REPLY) == {}


def test_our_compressor_output_decodes_in_a_fresh_decompressor() -> None:
    c = HeaderCompressor()
    first = c.encode(PORT_8080_ERROR)
    second = c.encode(PORT_8080_DATA)
    # 2 KiB window (CMF 0x38, small deflate state), FDICT + dictionary id.
    assert first.startswith(bytes.fromhex("38eae3c6a7c2"))
    assert first.endswith(b"\x00\x00\xff\xff") and second.endswith(b"\x00\x00\xff\xff")
    d = HeaderDecompressor()
    assert d.decode(first) == dict(PORT_8080_ERROR)
    assert d.decode(second) == dict(PORT_8080_DATA)
    with pytest.raises(CompressionError):
        HeaderDecompressor().decode(second)


def test_our_compressor_matches_go_for_the_data_block() -> None:
    # Only the second block is shared by Go and CPython zlib output (V4 == V7 data block).
    c = HeaderCompressor()
    c.encode(PORT_8080_ERROR)
    assert V4_GO_BLOCK == V7_PY_DATA_BLOCK
    assert HeaderDecompressor().decompress(bytes.fromhex(V3_GO_BLOCK)) == bytes.fromhex(
        V2_ERROR_BLOCK
    )


def test_cached_uncompressed_block_is_compressed_per_use() -> None:
    cached = HeaderBlock.encode(PORT_8080_DATA)
    assert cached.raw == encode_header_block(PORT_8080_DATA)
    assert not cached.has_host
    c = HeaderCompressor()
    d = HeaderDecompressor()
    outputs = [c.compress(cached.raw) for _ in range(3)]
    assert [d.decode(o) for o in outputs] == [dict(PORT_8080_DATA)] * 3
    assert len(outputs[1]) < len(outputs[0])  # the shared context already knows it
    assert HeaderBlock.encode([("Host", "x")]).has_host


@pytest.mark.parametrize("capture", CAPTURES.values(), ids=list(CAPTURES))
def test_capture_blocks_decode_in_order_on_one_context(capture: object) -> None:
    from .spdy_vectors import Capture

    assert isinstance(capture, Capture)
    d = HeaderDecompressor()
    for frame in capture.client_frames:
        if frame.type != "SYN_STREAM":
            continue
        assert frame.decompressed is not None and frame.headers is not None
        assert d.decompress(frame.raw[18:]) == frame.decompressed
        assert decode_header_block(frame.decompressed) == dict(frame.headers)


def test_encode_normalises_names() -> None:
    raw = encode_header_block([("StreamType", "data"), ("X-Multi", "a"), ("x-multi", "b")])
    assert decode_header_block(raw) == {"streamtype": "data", "x-multi": "a\0b"}
    # Non-ASCII bytes survive a round trip.
    raw = encode_header_block([("k", "caf\u00e9 \udcff")])
    assert decode_header_block(raw) == {"k": "caf\u00e9 \udcff"}


@pytest.mark.parametrize(
    ("pairs", "forbidden"),
    [
        ([("", "x")], FORBIDDEN_IN_SYN_STREAM),
        ([("Host", "x")], FORBIDDEN_IN_SYN_STREAM),
        ([("connection", "x")], FORBIDDEN_IN_SYN_REPLY),
        ([("Transfer-Encoding", "chunked")], FORBIDDEN_IN_SYN_REPLY),
        ([(f"h{i}", "") for i in range(1001)], FORBIDDEN_IN_SYN_STREAM),
        ([("big", "x" * ((1 << 20) + 1))], FORBIDDEN_IN_SYN_STREAM),
        ([(f"h{i}", "x" * (1 << 20)) for i in range(4)], FORBIDDEN_IN_SYN_STREAM),
    ],
)
def test_encode_refuses_what_a_peer_would_reject(
    pairs: list[tuple[str, str]], forbidden: frozenset[str]
) -> None:
    with pytest.raises(ValueError):
        encode_header_block(pairs, forbidden=forbidden)


def test_host_is_allowed_in_a_reply() -> None:
    raw = encode_header_block([("Host", "a")], forbidden=FORBIDDEN_IN_SYN_REPLY)
    assert decode_header_block(raw, FORBIDDEN_IN_SYN_REPLY) == {"host": "a"}


# (uncompressed block, forbidden set, error class, message fragment)
BAD_BLOCKS = [
    (block((b"Port", b"1")), FORBIDDEN_IN_SYN_STREAM, HeaderError, "not lowercase"),
    (block((b"port", b"1"), (b"port", b"2")), FORBIDDEN_IN_SYN_STREAM, HeaderError, "duplicate"),
    (block((b"host", b"h")), FORBIDDEN_IN_SYN_STREAM, HeaderError, "not allowed"),
    (block((b"keep-alive", b"1")), FORBIDDEN_IN_SYN_REPLY, HeaderError, "not allowed"),
    (block((b"proxy-connection", b"1")), FORBIDDEN_IN_SYN_STREAM, HeaderError, "not allowed"),
    (block(count=1001), FORBIDDEN_IN_SYN_STREAM, HeaderError, "exceed the limit"),
    (block((b"n" * ((1 << 20) + 1), b"")), FORBIDDEN_IN_SYN_STREAM, HeaderError, "name of"),
    (block((b"n", b"v" * ((1 << 20) + 1))), FORBIDDEN_IN_SYN_STREAM, HeaderError, "value of"),
    (b"", FORBIDDEN_IN_SYN_STREAM, CompressionError, "no count"),
    (b"\0\0\0", FORBIDDEN_IN_SYN_STREAM, CompressionError, "no count"),
    (block(count=1), FORBIDDEN_IN_SYN_STREAM, CompressionError, "before a name length"),
    (block((b"port", b"1"))[:-1], FORBIDDEN_IN_SYN_STREAM, CompressionError, "inside a value"),
    (block((b"port", b"1"))[:9], FORBIDDEN_IN_SYN_STREAM, CompressionError, "inside a name"),
    (block((b"port", b"1"))[:14], FORBIDDEN_IN_SYN_STREAM, CompressionError, "value length"),
    (block((b"port", b"1")) + b"\0", FORBIDDEN_IN_SYN_STREAM, CompressionError, "trailing"),
    (block(count=0) + b"junk", FORBIDDEN_IN_SYN_STREAM, CompressionError, "trailing"),
]


@pytest.mark.parametrize(("raw", "forbidden", "error", "fragment"), BAD_BLOCKS)
def test_bad_block_raises_typed_error(
    raw: bytes, forbidden: frozenset[str], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error) as info:
        decode_header_block(raw, forbidden)
    assert type(info.value) is error
    assert isinstance(info.value, HeaderError | CompressionError)
    assert fragment in info.value.message
    assert (info.value.error_code, info.value.stream_id) == (1, None)


def test_bad_block_through_the_shared_context() -> None:
    c = HeaderCompressor()
    d = HeaderDecompressor()
    with pytest.raises(HeaderError):
        d.decode(c.compress(block((b"Port", b"1"))))
    # A content error leaves the zlib context usable for the next block.
    assert d.decode(c.encode(PORT_8080_ERROR)) == dict(PORT_8080_ERROR)


def test_bomb_is_bounded() -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=DICTIONARY)
    payload = bomb.compress(bytes(64 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    assert len(payload) < 128 << 10
    d = HeaderDecompressor()
    tracemalloc.start()
    try:
        with pytest.raises(CompressionError, match="inflates past"):
            d.decompress(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_BLOCK_SIZE  # the 64 MiB never materialise
    with pytest.raises(CompressionError, match="unusable"):
        d.decompress(b"")


def test_block_at_the_limit_is_accepted() -> None:
    c = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=DICTIONARY)
    raw = bytes(4096)
    d = HeaderDecompressor(max_block_size=4096)
    assert d.decompress(c.compress(raw) + c.flush(zlib.Z_SYNC_FLUSH)) == raw
    with pytest.raises(CompressionError):
        d.decompress(c.compress(raw + b"\0") + c.flush(zlib.Z_SYNC_FLUSH))


def test_finished_zlib_stream_is_an_error() -> None:
    c = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=DICTIONARY)
    finished = c.compress(block()) + c.flush(zlib.Z_FINISH)
    with pytest.raises(CompressionError, match="ended the zlib stream"):
        HeaderDecompressor().decompress(finished)


def test_wrong_dictionary_is_an_error() -> None:
    c = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=b"not the spdy dictionary")
    with pytest.raises(CompressionError):
        HeaderDecompressor().decompress(c.compress(block()) + c.flush(zlib.Z_SYNC_FLUSH))
