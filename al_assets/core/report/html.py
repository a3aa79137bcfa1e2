"""One static, self-contained HTML page for the analysis report.

No external CSS or JavaScript, so the page opens from a bucket, an e-mail or an air-gapped
machine. Images are either files next to the HTML (small page, easy to diff) or embedded as
base64 data URIs (one file to share). Every piece of text is escaped: labels, file names and
table cells come from user data, and a label like ``<script>`` must stay text.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa

from al_assets.core.display import display_text
from al_assets.core.storage.files import write_bytes_atomic

MAX_TABLE_ROWS = 100

_MIME_BY_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
nav ul { columns: 2; }
section { margin-bottom: 2.5em; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.thumb { padding: 2px; text-align: center; }
td.thumb img { display: block; max-width: 96px; max-height: 96px; }
td.thumb.missing { color: #888; font-size: 0.8em; width: 96px; }
.note { font-size: 0.85em; color: #666; }
"""


@dataclass(frozen=True)
class ReportImage:
    """A PNG or JPEG shown in a section; ``name`` is its file name next to the HTML."""

    name: str
    data: bytes
    caption: str = ""


@dataclass(frozen=True)
class ThumbnailTable:
    """A table whose rows each start with a small picture; None gives a placeholder cell, so a
    missing or broken image costs one cell, never the report."""

    table: pa.Table
    thumbnails: Sequence[ReportImage | None]

    def __post_init__(self) -> None:
        if len(self.thumbnails) != self.table.num_rows:
            raise ValueError(f"{len(self.thumbnails)} thumbnails for {self.table.num_rows} "
                             "rows; give one per row (None for a missing image)")


@dataclass(frozen=True)
class ReportSection:
    """A titled part of the report: explanation first, then images, then tables."""

    title: str
    text: str = ""
    images: Sequence[ReportImage] = ()
    tables: Sequence[pa.Table | ThumbnailTable] = ()

    def files(self) -> list[ReportImage]:
        """Every image the section refers to (figures, then table thumbnails)."""
        thumbs = [image for table in self.tables if isinstance(table, ThumbnailTable)
                  for image in table.thumbnails if image is not None]
        return [*self.images, *thumbs]


def render_html_report(
    title: str,
    sections: Sequence[ReportSection],
    *,
    embed_images: bool = False,
    max_table_rows: int = MAX_TABLE_ROWS,
) -> str:
    """The report page as a string.

    With ``embed_images`` False the page refers to each image by its ``name``; use
    :func:`write_html_report` to put the files there. Tables longer than ``max_table_rows``
    are cut, with a note saying how many rows were left out.
    """
    _check_image_names(sections)
    body = [f"<h1>{_esc(title)}</h1>", _table_of_contents(sections)]
    body += [
        _section(index, section, embed_images, max_table_rows)
        for index, section in enumerate(sections)
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{_esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_html_report(
    path: Path,
    title: str,
    sections: Sequence[ReportSection],
    *,
    embed_images: bool = False,
    max_table_rows: int = MAX_TABLE_ROWS,
) -> Path:
    """Write the page to ``path`` (and its images next to it), each file atomically.

    Images go first, so the page never points at a file that is not there yet.
    """
    path = Path(path)
    page = render_html_report(
        title, sections, embed_images=embed_images, max_table_rows=max_table_rows
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if not embed_images:
        for section in sections:
            for image in section.files():
                write_bytes_atomic(path.parent / image.name, image.data)
    write_bytes_atomic(path, page.encode("utf-8"))
    return path


def image_mime_type(image: ReportImage) -> str:
    """``image/png`` or ``image/jpeg`` from the bytes themselves (names can lie)."""
    for magic, mime in _MIME_BY_MAGIC.items():
        if image.data.startswith(magic):
            return mime
    raise ValueError(f"report image {image.name!r} is neither PNG nor JPEG data")


def _section(index: int, section: ReportSection, embed: bool, max_rows: int) -> str:
    """One ``<section>``: heading, paragraphs, figures, tables."""
    parts = [f'<section id="section-{index}">', f"<h2>{_esc(section.title)}</h2>"]
    parts += [f"<p>{_esc(paragraph)}</p>" for paragraph in _paragraphs(section.text)]
    parts += [_figure(image, embed) for image in section.images]
    parts += [_table(table, max_rows, embed) for table in section.tables]
    parts.append("</section>")
    return "\n".join(parts)


def _table_of_contents(sections: Sequence[ReportSection]) -> str:
    """Links to each section; long reports are read by jumping around."""
    if len(sections) < 2:
        return ""
    items = "".join(
        f'<li><a href="#section-{i}">{_esc(s.title)}</a></li>' for i, s in enumerate(sections)
    )
    return f"<nav><ul>{items}</ul></nav>"


def _paragraphs(text: str) -> list[str]:
    """Paragraphs are separated by blank lines; single line breaks are just spaces."""
    blocks = (" ".join(block.split()) for block in text.split("\n\n"))
    return [block for block in blocks if block]


def _figure(image: ReportImage, embed: bool) -> str:
    """An ``<img>`` with its caption."""
    caption = f"<figcaption>{_esc(image.caption)}</figcaption>" if image.caption else ""
    return f"<figure>{_img(image, embed)}{caption}</figure>"


def _img(image: ReportImage, embed: bool) -> str:
    """``src`` is a data URI or the URL-quoted file name."""
    mime = image_mime_type(image)
    if embed:
        source = f"data:{mime};base64,{base64.b64encode(image.data).decode('ascii')}"
    else:
        source = quote(image.name)
    alt = image.caption or image.name
    return f'<img src="{_esc(source)}" alt="{_esc(alt)}">'


def _table(table: pa.Table | ThumbnailTable, max_rows: int, embed: bool) -> str:
    """An HTML table of the first ``max_rows`` rows, numbers right-aligned."""
    thumbs = table.thumbnails if isinstance(table, ThumbnailTable) else None
    table = table.table if isinstance(table, ThumbnailTable) else table
    header = "".join(f"<th>{_esc(name)}</th>" for name in table.column_names)
    rows = [
        "".join(_cell(row[name]) for name in table.column_names)
        for row in table.slice(0, max_rows).to_pylist()
    ]
    if thumbs is not None:
        header = "<th>image</th>" + header
        rows = [_thumb_cell(image, embed) + row for image, row in zip(thumbs, rows)]
    rows = [f"<tr>{row}</tr>" for row in rows]
    note = ""
    if table.num_rows > max_rows:
        note = f'<p class="note">First {max_rows} of {table.num_rows} rows.</p>'
    body = "\n".join(rows)
    return f"<table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>{note}"


def _thumb_cell(image: ReportImage | None, embed: bool) -> str:
    if image is None:
        return '<td class="thumb missing">no image</td>'
    return f'<td class="thumb">{_img(image, embed)}</td>'


def _cell(value: object) -> str:
    """A ``<td>``; numbers get the ``num`` class so they line up."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    css = ' class="num"' if is_number else ""
    return f"<td{css}>{_esc(display_text(value))}</td>"


def _check_image_names(sections: Sequence[ReportSection]) -> None:
    """Names must be distinct plain file names: they are written next to the page."""
    seen: set[str] = set()
    for section in sections:
        for image in section.files():
            name = image.name
            if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
                raise ValueError(
                    f"report image name {name!r} in section {section.title!r} must be a plain "
                    "file name such as 'confusion.png' (no folders)"
                )
            if name in seen:
                raise ValueError(f"report image name {name!r} is used twice; names must differ")
            seen.add(name)


def _esc(text: object) -> str:
    """HTML-escaped text, quotes included (safe in attributes too)."""
    return html.escape(str(text), quote=True)
