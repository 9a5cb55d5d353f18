"""SPDY/3 header blocks: the uncompressed layout and the per-direction zlib contexts (§1.3).

Each direction of a connection uses ONE zlib stream for every header block, so a
compressed block is only meaningful at its position in that stream. To reuse a header
set, cache the *uncompressed* block (``HeaderBlock``) and compress it when sending.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Final

from .errors import CompressionError, HeaderError

__all__ = [
    "DICTIONARY",
    "FORBIDDEN_IN_SYN_REPLY",
    "FORBIDDEN_IN_SYN_STREAM",
    "MAX_BLOCK_SIZE",
    "MAX_HEADERS",
    "MAX_HEADER_FIELD",
    "HeaderBlock",
    "HeaderCompressor",
    "HeaderDecompressor",
    "decode_header_block",
    "encode_header_block",
]

DICTIONARY: Final = (
    resources.files(__name__.rpartition(".")[0]).joinpath("spdy3_dictionary.bin").read_bytes()
)

MAX_HEADERS: Final = 1000
MAX_HEADER_FIELD: Final = 1 << 20
# Bound on one inflated block: a hostile "zip bomb" block fails instead of eating memory.
MAX_BLOCK_SIZE: Final = 4 << 20

FORBIDDEN_IN_SYN_STREAM: Final = frozenset(
    {"connection", "host", "keep-alive", "proxy-connection", "transfer-encoding"}
)
FORBIDDEN_IN_SYN_REPLY: Final = FORBIDDEN_IN_SYN_STREAM - {"host"}

_U32 = struct.Struct(">I")


def _text(raw: bytes) -> str:
    # surrogateescape keeps arbitrary bytes round-trippable through str.
    return raw.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def encode_header_block(
    headers: Iterable[tuple[str, str]], *, forbidden: frozenset[str] = FORBIDDEN_IN_SYN_STREAM
) -> bytes:
    """Serialise ``(name, value)`` pairs into an uncompressed SPDY/3 header block.

    Names are lowercased and repeated names are merged with NUL-joined values, so the
    result never trips a Go peer (§1.9). Raises ``ValueError`` for an empty or forbidden
    name, or a block a peer would refuse (too many headers, oversized name, value or block).
    """
    merged: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if not key:
            raise ValueError("empty header name")
        if key in forbidden:
            raise ValueError(f"header {key!r} is not allowed in this frame")
        previous = merged.get(key)
        merged[key] = value if previous is None else f"{previous}\0{value}"
    if len(merged) > MAX_HEADERS:
        raise ValueError(f"{len(merged)} headers exceed the limit of {MAX_HEADERS}")
    pack = _U32.pack
    parts = [pack(len(merged))]
    for key, value in merged.items():
        name_b = _raw(key)
        value_b = _raw(value)
        if len(name_b) > MAX_HEADER_FIELD or len(value_b) > MAX_HEADER_FIELD:
            raise ValueError(f"header {key!r} exceeds {MAX_HEADER_FIELD} bytes")
        parts += (pack(len(name_b)), name_b, pack(len(value_b)), value_b)
    block = b"".join(parts)
    if len(block) > MAX_BLOCK_SIZE:
        raise ValueError(f"header block of {len(block)} bytes exceeds {MAX_BLOCK_SIZE}")
    return block


def _length_prefixed(block: bytes, pos: int, what: str) -> tuple[bytes, int]:
    """The bytes of the name or value (``what``) whose length is at ``pos``, and the
    position after them."""
    size = len(block)
    if size - pos < 4:
        raise CompressionError(f"header block truncated before a {what} length")
    n = _U32.unpack_from(block, pos)[0]
    pos += 4
    if n > size - pos:
        raise CompressionError(f"header block truncated inside a {what}")
    return block[pos : pos + n], pos + n


def decode_header_block(
    block: bytes, forbidden: frozenset[str] = FORBIDDEN_IN_SYN_STREAM
) -> dict[str, str]:
    """Parse an uncompressed header block, enforcing the Go reader's rules.

    Layout problems (truncation, trailing bytes) raise ``CompressionError``: the bytes do
    not form a block, so the decompressor and the peer disagree. Rule violations in a
    well-formed block (case, duplicates, forbidden names, limits) raise ``HeaderError``.
    """
    size = len(block)
    if size < 4:
        raise CompressionError(f"header block of {size} bytes has no count")
    count = _U32.unpack_from(block, 0)[0]
    if count > MAX_HEADERS:
        raise HeaderError(f"{count} headers exceed the limit of {MAX_HEADERS}")
    headers: dict[str, str] = {}
    pos = 4
    for _ in range(count):
        raw, pos = _length_prefixed(block, pos, "name")
        if len(raw) > MAX_HEADER_FIELD:
            raise HeaderError(f"header name of {len(raw)} bytes exceeds {MAX_HEADER_FIELD}")
        name = _text(raw)
        raw, pos = _length_prefixed(block, pos, "value")
        if len(raw) > MAX_HEADER_FIELD:
            raise HeaderError(f"value of header {name!r} exceeds {MAX_HEADER_FIELD} bytes")
        value = _text(raw)
        if name != name.lower():
            raise HeaderError(f"header name {name!r} is not lowercase")
        if name in headers:
            raise HeaderError(f"duplicate header {name!r}")
        if name in forbidden:
            raise HeaderError(f"header {name!r} is not allowed in this frame")
        headers[name] = value
    if pos != size:
        raise CompressionError(f"{size - pos} trailing bytes after the header block")
    return headers


@dataclass(frozen=True, slots=True)
class HeaderBlock:
    """An uncompressed, validated header block: cache it and send it on any connection."""

    raw: bytes
    has_host: bool = False

    @classmethod
    def encode(cls, headers: Iterable[tuple[str, str]]) -> HeaderBlock:
        pairs = list(headers)
        raw = encode_header_block(pairs, forbidden=FORBIDDEN_IN_SYN_REPLY)
        return cls(raw, any(name.lower() == "host" for name, _ in pairs))


class HeaderCompressor:
    """The sending direction's zlib context; every block ends with a sync flush."""

    __slots__ = ("_z",)

    def __init__(self, level: int = 9) -> None:
        # Why: a 2 KiB window (>= the 1423-byte dictionary) and memLevel 1 cut the deflate
        # state from ~256 KiB to ~9 KiB per connection; any zlib inflater accepts it.
        self._z = zlib.compressobj(level, zlib.DEFLATED, 11, memLevel=1, zdict=DICTIONARY)

    def compress(self, block: bytes) -> bytes:
        """Compress one uncompressed block (e.g. a cached ``HeaderBlock.raw``)."""
        z = self._z
        return z.compress(block) + z.flush(zlib.Z_SYNC_FLUSH)

    def encode(
        self,
        headers: Iterable[tuple[str, str]],
        *,
        forbidden: frozenset[str] = FORBIDDEN_IN_SYN_STREAM,
    ) -> bytes:
        return self.compress(encode_header_block(headers, forbidden=forbidden))


class HeaderDecompressor:
    """The receiving direction's zlib context, with bounded output per block."""

    __slots__ = ("_broken", "_max", "_z")

    def __init__(self, max_block_size: int = MAX_BLOCK_SIZE) -> None:
        self._z = zlib.decompressobj(zdict=DICTIONARY)
        self._max = max_block_size
        self._broken = False

    def decompress(self, compressed: bytes) -> bytes:
        """Inflate one compressed block. Any failure leaves the context unusable."""
        if self._broken:
            raise CompressionError("header decompressor is unusable after an earlier error")
        z = self._z
        try:
            out = z.decompress(compressed, self._max + 1)
        except zlib.error as exc:
            self._broken = True
            raise CompressionError(f"header block does not inflate: {exc}") from None
        if len(out) > self._max or z.unconsumed_tail:
            self._broken = True
            raise CompressionError(f"header block inflates past {self._max} bytes")
        if z.eof:
            self._broken = True
            raise CompressionError("header block ended the zlib stream")
        return out

    def decode(
        self, compressed: bytes, forbidden: frozenset[str] = FORBIDDEN_IN_SYN_STREAM
    ) -> dict[str, str]:
        return decode_header_block(self.decompress(compressed), forbidden)
