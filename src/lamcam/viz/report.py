"""A small, self-contained static HTML report (``index.html``) for lamcam figures.

The report is a list of :class:`Section` objects, each with a title, free text, an optional
table and a list of :class:`ReportImage` (figure + caption). Producers (the CAM demo today, a LAM
comparison later) just build sections and append them; :func:`write_index_html` renders them.

The page uses only relative links and inline CSS: no JavaScript, no external resources, so the
output directory can be zipped, moved or opened from disk. Every piece of text is escaped.

Example:
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (40, 20), "white").save(d / "fig.png")
    >>> sec = Section("shapes_vgg", "Grad-CAM family on the samples.",
    ...               [ReportImage("fig.png", "true: circle\\npred: circle (0.99)")])
    >>> p = write_index_html(d, [sec])
    >>> 'href="fig.png"' in p.read_text()
    True
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image

from lamcam._files import atomic_save_image, atomic_write_text

__all__ = ["ReportImage", "Section", "write_index_html"]


@dataclass
class ReportImage:
    """One figure in a report section.

    Attributes:
        path: the full-size image; relative paths are relative to the report directory,
            absolute paths should lie inside it (links are always written relative).
        caption: text under the thumbnail; newlines become line breaks.
        status: optional ``"ok"`` / ``"bad"`` to frame the thumbnail green / red
            (e.g. correct / wrong prediction); ``None`` for no frame colour.
        alt: alternative text (default: the caption's first line, else the file name); use
            it for the text a figure already shows (its title) instead of repeating that text
            in a caption.
    """

    path: str | os.PathLike
    caption: str = ""
    status: str | None = None
    alt: str = ""


@dataclass
class Section:
    """A titled block of the report.

    Attributes:
        title: heading (also used for the table of contents and the anchor).
        text: paragraph(s); blank lines separate paragraphs.
        images: figures shown as thumbnails linking to the full images.
        table: optional rows of cells; the first row is the header.
    """

    title: str
    text: str = ""
    images: list[ReportImage] = field(default_factory=list)
    table: list[list[Any]] | None = None

    @classmethod
    def coerce(cls, obj: Section | Mapping[str, Any]) -> Section:
        """Accept a :class:`Section` or a plain dict with the same keys.

        Images may be :class:`ReportImage`, dicts, or bare paths.

        Example:
            >>> Section.coerce({"title": "t", "images": ["a.png"]}).images[0].path
            'a.png'
        """
        if isinstance(obj, Section):
            sec = obj
        elif isinstance(obj, Mapping):
            unknown = set(obj) - {"title", "text", "images", "table"}
            if unknown:
                raise ValueError(f"unknown section keys {sorted(unknown)}")
            sec = cls(
                title=str(obj.get("title", "")),
                text=str(obj.get("text", "")),
                images=list(obj.get("images", [])),
                table=obj.get("table"),
            )
        else:
            raise TypeError(f"expected a Section or a dict, got {type(obj).__name__}")
        images: list[ReportImage] = []
        for im in sec.images:
            if isinstance(im, ReportImage):
                images.append(im)
            elif isinstance(im, Mapping):
                images.append(ReportImage(**im))
            else:
                images.append(ReportImage(im))
        sec.images = images
        return sec


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1600px; padding: 0 16px; color: #222; background: #fafafa; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 1.8em; }
p.meta { color: #666; margin-top: 0; }
nav ul { padding-left: 1.2em; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.95em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
th { background: #eee; }
.figs { display: flex; flex-wrap: wrap; gap: 14px; }
figure { margin: 0; background: #fff; border: 2px solid #ddd; border-radius: 4px; padding: 6px;
         max-width: 100%; }
figure.ok { border-color: #3a9a3a; }
figure.bad { border-color: #c83232; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; line-height: 1.35; margin-top: 4px; overflow-wrap: anywhere; }
p, li, h1, h2 { overflow-wrap: anywhere; }
.table-wrap { max-width: 100%; overflow-x: auto; }
/* wide figures (a row of panels): full width on a wide screen; on a narrow one they keep a
   readable size and scroll inside their own frame, never the page */
figure.wide { flex: 1 1 100%; }
figure.wide img { width: 100%; }
@media (max-width: 760px) {
  body { margin: 12px auto; padding: 0 8px; }
  figure.wide { overflow-x: auto; }
  figure.wide img { width: auto; max-width: none; height: 240px; }
  figure.big { overflow-x: auto; }
  figure.big img { max-width: none; width: 720px; }
  table { font-size: 0.85em; }
}
"""


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, k = base, 2
    while slug in used:
        slug, k = f"{base}-{k}", k + 1
    used.add(slug)
    return slug


def _rel(out_dir: Path, p: str | os.PathLike) -> str:
    p = Path(p)
    full = p if p.is_absolute() else out_dir / p
    rel = os.path.relpath(full.resolve(), out_dir.resolve())
    return Path(rel).as_posix()


def _href(rel: str) -> str:
    return html.escape(quote(rel, safe="/._-+~"), quote=True)


def _thumbnail(out_dir: Path, rel: str, width: int) -> str:
    """Write a downscaled copy under ``thumbs/`` when the image is wider than ``width``."""
    src = out_dir / rel
    try:
        with Image.open(src) as im:
            if im.width <= width:
                return rel
            h = max(1, round(im.height * width / im.width))
            small = im.convert("RGB").resize((width, h), Image.Resampling.LANCZOS)
    except (OSError, ValueError) as e:
        warnings.warn(
            f"report: cannot read {src} for a thumbnail ({e}); linking it as is",
            UserWarning,
            stacklevel=3,
        )
        return rel
    digest = hashlib.sha1(rel.encode()).hexdigest()[:8]
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", Path(rel).stem)[:60]
    name = f"thumbs/{stem}-{digest}.png"
    atomic_save_image(out_dir / name, small, optimize=True)
    return name


def _shape(path: Path, ratio: float = 2.5, big: int = 800) -> str:
    """``"wide"`` for a row of panels (width > ``ratio`` × height), ``"big"`` for another image
    wider than ``big`` pixels, else ``""``: on a narrow screen such figures keep a readable size
    and scroll inside their frame (see the CSS)."""
    try:
        with Image.open(path) as im:
            if im.width > ratio * im.height:
                return "wide"
            return "big" if im.width > big else ""
    except (OSError, ValueError):
        return ""


def _text_html(text: str) -> str:
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    return "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>\n" for p in paras)


def _table_html(rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return ""
    head, *body = rows
    header = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    out = ['<div class="table-wrap"><table>', f"<tr>{header}</tr>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    out.append("</table></div>\n")
    return "\n".join(out)


def write_index_html(
    out_dir: str | os.PathLike,
    sections: Iterable[Section | Mapping[str, Any]],
    *,
    title: str = "lamcam report",
    subtitle: str = "",
    thumbnails: bool = True,
    thumb_width: int = 960,
    filename: str = "index.html",
) -> Path:
    """Write a static, self-contained HTML page presenting ``sections``.

    Args:
        out_dir: report directory (created if needed); all links are relative to it.
        sections: :class:`Section` objects (or dicts with ``title``, ``text``, ``images``,
            ``table``), rendered in order with a table of contents.
        title: page title / heading.
        subtitle: a line of grey text under the heading.
        thumbnails: write downscaled copies (``thumbs/``) of images wider than ``thumb_width``
            pixels and show those, linking to the full images.
        thumb_width: thumbnail width in pixels.
        filename: name of the HTML file.

    Returns:
        Path of the written HTML file.

    Example:
        >>> import tempfile
        >>> p = write_index_html(tempfile.mkdtemp(), [{"title": "A <b>", "text": "x & y"}])
        >>> "A &lt;b&gt;" in p.read_text() and "x &amp; y" in p.read_text()
        True
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    secs = [Section.coerce(s) for s in sections]
    used: set[str] = set()
    anchors = [_slug(s.title, used) for s in secs]

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if subtitle:
        parts.append(f'<p class="meta">{html.escape(subtitle)}</p>')
    if len(secs) > 1:
        parts.append("<nav><ul>")
        for sec, anchor in zip(secs, anchors, strict=True):
            parts.append(f'<li><a href="#{anchor}">{html.escape(sec.title)}</a></li>')
        parts.append("</ul></nav>")
    for sec, anchor in zip(secs, anchors, strict=True):
        parts.append(f'<section id="{anchor}">')
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.text:
            parts.append(_text_html(sec.text))
        if sec.table:
            parts.append(_table_html(sec.table))
        if sec.images:
            parts.append('<div class="figs">')
            for im in sec.images:
                rel = _rel(out, im.path)
                if not (out / rel).exists():
                    warnings.warn(
                        f"report: image {out / rel} does not exist", UserWarning, stacklevel=2
                    )
                shown = _thumbnail(out, rel, thumb_width) if thumbnails else rel
                classes = [im.status] if im.status in ("ok", "bad") else []
                shape = _shape(out / shown)
                if shape:
                    classes.append(shape)
                cls = f' class="{" ".join(classes)}"' if classes else ""
                alt_text = im.alt or (im.caption.splitlines()[0] if im.caption else Path(rel).name)
                alt = html.escape(alt_text, quote=True)
                cap = html.escape(im.caption).replace("\n", "<br>")
                parts.append(
                    f'<figure{cls}><a href="{_href(rel)}">'
                    f'<img src="{_href(shown)}" alt="{alt}" loading="lazy"></a>'
                    + (f"<figcaption>{cap}</figcaption>" if cap else "")
                    + "</figure>"
                )
            parts.append("</div>")
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return atomic_write_text(out / filename, "\n".join(parts))
