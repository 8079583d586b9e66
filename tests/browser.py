"""Driving a real headless Chromium from tests, and reading its screenshots.

The browser is the system's Chromium (Debian's ``/usr/bin/chromium``; CI installs it
with apt), driven by Playwright for Python's sync API: no browser is downloaded.
`unavailable` says why the browser tests cannot run here; `launch` starts one
browser; `open_offline` opens a local file with every network request refused and
recorded, and collects console and page errors.  `read_png` decodes a screenshot
with the standard library only (zlib), so pixels can be checked without Pillow.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, Route

#: Without these, Chromium on a machine with no network stalls on background
#: connections (component updates, sync, QUIC probes) and a sandbox it cannot set up.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """The system Chromium: ``$TASKMAP_CHROMIUM``, else the first found on PATH."""
    chosen = os.environ.get("TASKMAP_CHROMIUM")
    if chosen:
        return chosen if Path(chosen).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def unavailable() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install 'playwright>=1.40')"
    if chromium_path() is None:
        return "no Chromium found (apt-get install chromium, or set TASKMAP_CHROMIUM)"
    return None


@contextmanager
def launch() -> Iterator[Browser]:
    """Start the system Chromium headless; close it (and Playwright) on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watch:
    """What a page did that a test must see: errors, and network it tried."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # requests other than file://
    dialogs: list[str] = field(default_factory=list)  # alert() and friends: injected script

    @property
    def problems(self) -> list[str]:
        return [
            *(f"console error: {e}" for e in self.console_errors),
            *(f"page error: {e}" for e in self.page_errors),
            *(f"network request: {url}" for url in self.blocked),
            *(f"dialog: {text}" for text in self.dialogs),
        ]


@contextmanager
def open_offline(
    browser: Browser, path: Path, *, width: int = 1280, height: int = 900
) -> Iterator[tuple[Page, Watch]]:
    """Open a local file in a new page where only ``file://`` loads; the rest aborts."""
    watch = Watch()
    page = browser.new_page(viewport={"width": width, "height": height})

    def route(route: Route) -> None:
        url = route.request.url
        if url.startswith("file://"):
            route.continue_()
        else:
            watch.blocked.append(url)
            route.abort()

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watch.console_errors.append(message.text)

    def dialog(dialog: Dialog) -> None:  # alert(): a name or error ran as a script
        watch.dialogs.append(dialog.message)
        dialog.dismiss()

    page.route("**/*", route)
    page.on("console", console)
    page.on("pageerror", lambda error: watch.page_errors.append(str(error)))
    page.on("dialog", dialog)
    try:
        page.goto(path.resolve().as_uri(), wait_until="load")
        yield page, watch
    finally:
        page.close()


@dataclass(frozen=True)
class Png:
    """A decoded 8-bit RGB or RGBA PNG: ``pixel(x, y)`` is an (r, g, b) tuple."""

    width: int
    height: int
    channels: int
    rows: list[bytes]

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        at = x * self.channels
        r, g, b = self.rows[y][at : at + 3]
        return (r, g, b)

    def colours(self) -> set[tuple[int, int, int]]:
        """Every distinct colour (on every fourth row and column: fast enough)."""
        return {self.pixel(x, y) for y in range(0, self.height, 4) for x in range(0, self.width, 4)}


def read_png(data: bytes) -> Png:
    """Decode a non-interlaced 8-bit RGB(A) PNG, as Chromium writes screenshots."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG: bad signature")
    at, chunks, header = 8, [], b""
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        if zlib.crc32(kind + body) != crc:
            raise ValueError(f"PNG chunk {kind!r} has a bad CRC")
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        at += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}")
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    return Png(width, height, channels, _unfilter(raw, width * channels, height, channels))


def _unfilter(raw: bytes, stride: int, height: int, bpp: int) -> list[bytes]:
    """Undo PNG's per-row filters (None, Sub, Up, Average, Paeth)."""
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        row = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = row[i - bpp] if i >= bpp else 0
            up = previous[i]
            corner = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                row[i] = (row[i] + left) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + up) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                row[i] = (row[i] + _paeth(left, up, corner)) & 0xFF
        rows.append(bytes(row))
        previous = row
    return rows


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c
