"""A bar chart of the target ratios as a PNG, written with zlib + struct only (no
plotting dependency). Text uses a small built-in 5x7 upper-case bitmap font."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Bar", "Canvas", "bar_chart", "write_png"]

RGB = tuple[int, int, int]

# 5x7 glyphs, rows top to bottom, '#' = ink. Lower case is drawn as upper case.
_GLYPHS: dict[str, str] = {
    " ": "...../...../...../...../...../...../.....",
    "A": ".###./#...#/#...#/#####/#...#/#...#/#...#",
    "B": "####./#...#/#...#/####./#...#/#...#/####.",
    "C": ".###./#...#/#..../#..../#..../#...#/.###.",
    "D": "####./#...#/#...#/#...#/#...#/#...#/####.",
    "E": "#####/#..../#..../####./#..../#..../#####",
    "F": "#####/#..../#..../####./#..../#..../#....",
    "G": ".###./#...#/#..../#.###/#...#/#...#/.####",
    "H": "#...#/#...#/#...#/#####/#...#/#...#/#...#",
    "I": ".###./..#../..#../..#../..#../..#../.###.",
    "J": "..###/...#./...#./...#./...#./#..#./.##..",
    "K": "#...#/#..#./#.#../##.../#.#../#..#./#...#",
    "L": "#..../#..../#..../#..../#..../#..../#####",
    "M": "#...#/##.##/#.#.#/#.#.#/#...#/#...#/#...#",
    "N": "#...#/##..#/#.#.#/#..##/#...#/#...#/#...#",
    "O": ".###./#...#/#...#/#...#/#...#/#...#/.###.",
    "P": "####./#...#/#...#/####./#..../#..../#....",
    "Q": ".###./#...#/#...#/#...#/#.#.#/#..#./.##.#",
    "R": "####./#...#/#...#/####./#.#../#..#./#...#",
    "S": ".####/#..../#..../.###./....#/....#/####.",
    "T": "#####/..#../..#../..#../..#../..#../..#..",
    "U": "#...#/#...#/#...#/#...#/#...#/#...#/.###.",
    "V": "#...#/#...#/#...#/#...#/#...#/.#.#./..#..",
    "W": "#...#/#...#/#...#/#.#.#/#.#.#/#.#.#/.#.#.",
    "X": "#...#/#...#/.#.#./..#../.#.#./#...#/#...#",
    "Y": "#...#/#...#/.#.#./..#../..#../..#../..#..",
    "Z": "#####/....#/...#./..#../.#.../#..../#####",
    "0": ".###./#...#/#..##/#.#.#/##..#/#...#/.###.",
    "1": "..#../.##../..#../..#../..#../..#../.###.",
    "2": ".###./#...#/....#/...#./..#../.#.../#####",
    "3": "####./....#/....#/.###./....#/....#/####.",
    "4": "...#./..##./.#.#./#..#./#####/...#./...#.",
    "5": "#####/#..../####./....#/....#/#...#/.###.",
    "6": ".###./#..../#..../####./#...#/#...#/.###.",
    "7": "#####/....#/...#./..#../.#.../.#.../.#...",
    "8": ".###./#...#/#...#/.###./#...#/#...#/.###.",
    "9": ".###./#...#/#...#/.####/....#/....#/.###.",
    ".": "...../...../...../...../...../.##../.##..",
    ",": "...../...../...../...../.##../..#../.#...",
    ":": "...../.##../.##../...../.##../.##../.....",
    "-": "...../...../...../#####/...../...../.....",
    "+": "...../..#../..#../#####/..#../..#../.....",
    "/": "....#/...#./...#./..#../.#.../.#.../#....",
    "(": "...#./..#../.#.../.#.../.#.../..#../...#.",
    ")": ".#.../..#../...#./...#./...#./..#../.#...",
    "<": "...#./..#../.#.../#..../.#.../..#../...#.",
    ">": ".#.../..#../...#./....#/...#./..#../.#...",
    "=": "...../...../#####/...../#####/...../.....",
    "%": "##..#/##..#/...#./..#../.#.../#..##/#..##",
    "_": "...../...../...../...../...../...../#####",
    "'": "..#../..#../...../...../...../...../.....",
    "?": ".###./#...#/....#/...#./..#../...../..#..",
    "!": "..#../..#../..#../..#../..#../...../..#..",
    "#": ".#.#./#####/.#.#./.#.#./.#.#./#####/.#.#.",
    "*": "...../#.#.#/.###./#####/.###./#.#.#/.....",
    "x": "...../...../#...#/.#.#./..#../.#.#./#...#",
    "\u00d7": "...../...../#...#/.#.#./..#../.#.#./#...#",
    "\u00f7": "...../..#../...../#####/...../..#../.....",
    "\u2265": ".#.../..#../...#./..#../.#.../...../#####",
    "\u2264": "...#./..#../.#.../..#../...#./...../#####",
    "\u2192": "...../..#../...#./#####/...#./..#../.....",
    "\u2193": "..#../..#../..#../#.#.#/.###./..#../.....",
    "\u2191": "..#../.###./#.#.#/..#../..#../..#../.....",
    "\u2713": "...../....#/...#./#..#./.#.#./..#../.....",
    "\u2717": "...../#...#/.#.#./..#../.#.#./#...#/.....",
}
_FONT: dict[str, list[int]] = {
    ch: [int(row.replace("#", "1").replace(".", "0"), 2) for row in glyph.split("/")]
    for ch, glyph in _GLYPHS.items()
}


def write_png(path: Path, width: int, height: int, rgb: bytes | bytearray) -> None:
    """Write an 8-bit RGB PNG (no interlace) of ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    stride = width * 3
    raw = b"".join(b"\x00" + bytes(rgb[y * stride : (y + 1) * stride]) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


class Canvas:
    """An RGB pixel buffer with rectangles and text."""

    def __init__(self, width: int, height: int, background: RGB = (255, 255, 255)) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(background) * (width * height))

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: RGB) -> None:
        x0, x1 = max(0, min(x0, x1)), min(self.width, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.height, max(y0, y1))
        if x0 >= x1:
            return
        row = bytes(color) * (x1 - x0)
        for y in range(y0, y1):
            start = (y * self.width + x0) * 3
            self.pixels[start : start + len(row)] = row

    def text(self, x: int, y: int, text: str, color: RGB = (0, 0, 0), scale: int = 2) -> int:
        """Draw ``text`` with its top-left corner at (x, y); return the x after it."""
        for ch in text:
            glyph = _FONT.get(ch) or _FONT.get(ch.upper()) or _FONT["?"]
            for row, bits in enumerate(glyph):
                for col in range(5):
                    if bits & (1 << (4 - col)):
                        px, py = x + col * scale, y + row * scale
                        self.rect(px, py, px + scale, py + scale, color)
            x += 6 * scale
        return x

    @staticmethod
    def text_width(text: str, scale: int = 2) -> int:
        return len(text) * 6 * scale

    def save(self, path: Path) -> None:
        write_png(path, self.width, self.height, self.pixels)


@dataclass
class Bar:
    """One ratio: ``value`` (None = not measured) against ``target`` (None = no target).
    ``ok`` colours the bar: True green, False red, None grey."""

    label: str
    value: float | None
    target: float | None
    ok: bool | None


GREEN: RGB = (46, 160, 67)
RED: RGB = (207, 34, 46)
GREY: RGB = (150, 150, 150)
BLACK: RGB = (0, 0, 0)


def bar_chart(path: Path, title: str, subtitle: str, bars: Sequence[Bar]) -> None:
    """Horizontal bars, one per ratio, each with a black tick at its target."""
    scale = 2
    row_h = 26
    label_w = max([Canvas.text_width(b.label, scale) for b in bars] + [200]) + 20
    plot_w = 560
    top = 74
    width = label_w + plot_w + 140
    height = top + row_h * len(bars) + 50
    limit = max([3.5] + [b.value * 1.1 for b in bars if b.value is not None])
    limit = max(limit, *[(b.target or 0) * 1.15 for b in bars]) if bars else limit
    canvas = Canvas(width, height)
    canvas.text(10, 10, title, BLACK, scale)
    canvas.text(10, 36, subtitle, (90, 90, 90), 1)
    legend = "green: target met   red: missed   grey: no target (for information)"
    canvas.text(10, 50, legend, (90, 90, 90), 1)

    def x_of(v: float) -> int:
        return label_w + round(min(v, limit) / limit * plot_w)

    for tick in range(int(limit) + 1):  # grid lines at 1x, 2x, ...
        x = x_of(float(tick))
        canvas.rect(x, top - 6, x + 1, top + row_h * len(bars), (225, 225, 225))
        canvas.text(x - 6, top + row_h * len(bars) + 8, f"{tick}x", (90, 90, 90), 1)
    canvas.rect(x_of(1.0), top - 6, x_of(1.0) + 1, top + row_h * len(bars), (120, 120, 120))
    for i, bar in enumerate(bars):
        y = top + i * row_h
        canvas.text(10, y + 5, bar.label, BLACK, scale)
        if bar.value is not None:
            color = GREY if bar.ok is None else (GREEN if bar.ok else RED)
            canvas.rect(label_w, y + 3, x_of(bar.value), y + row_h - 5, color)
            spec = ".3f" if bar.ok is False and round(bar.value, 2) == bar.target else ".2f"
            text = format(bar.value, spec) + "x"
            end = x_of(bar.value)
            if bar.target is not None and end <= x_of(bar.target) <= end + 12 + len(text) * 12:
                end = x_of(bar.target) + 2  # keep the label clear of the tick
            canvas.text(end + 6, y + 5, text, BLACK, scale)
        else:
            canvas.text(label_w + 6, y + 5, "n/a", GREY, scale)
        if bar.target is not None:
            x = x_of(bar.target)
            canvas.rect(x - 1, y, x + 2, y + row_h - 2, BLACK)
    canvas.save(path)
