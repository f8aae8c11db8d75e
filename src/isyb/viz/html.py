"""Self-contained HTML pages: one page shell, embedded PNGs, no external resources.

Every page isyb writes (the deface summary, QC run pages and group report,
the study report) is built from these helpers, so that each is a single file
that opens offline and can be archived with the data.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path


def page(title: str, body: str, *, style: str, script: str = "") -> str:
    """A complete HTML document: ``<title>``, one ``<style>``, the body, an optional script.

    ``title`` is escaped; ``body``, ``style`` and ``script`` are inserted as given.
    """
    js = f"<script>{script}</script>" if script else ""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>{body}{js}</body></html>\n")


def png_base64(png: bytes) -> str:
    """PNG bytes as base64 text, for a ``data:`` URI."""
    return base64.b64encode(png).decode("ascii")


def figure_png(fig, *, dpi: int = 90) -> bytes:
    """A matplotlib figure rendered to PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def img(png: bytes | str | Path, alt: str, *, quote: str = "'", extra: str = "") -> str:
    """An ``<img>`` embedding ``png`` (bytes, base64 text or a PNG file) as a data URI.

    A path that does not exist gives the empty string. ``quote`` is the
    attribute quote character; ``extra`` more attributes, inserted as given.
    """
    if isinstance(png, Path):
        if not png.is_file():
            return ""
        png = png.read_bytes()
    data = png_base64(png) if isinstance(png, bytes) else png
    q = quote
    attributes = f" {extra}" if extra else ""
    return (f"<img alt={q}{html.escape(alt)}{q} "
            f"src={q}data:image/png;base64,{data}{q}{attributes}>")
