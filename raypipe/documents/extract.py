"""Plain text out of a document: txt, Markdown, HTML or PDF.

The format comes from an explicit choice, else the file name's extension, else the bytes
themselves; bytes that contradict the declared format are refused rather than parsed into
garbage. Parsers are imported when first needed, so the API process that only validates
payloads never loads them.

Every format is read in time linear in its size, and bounded by :class:`Limits`: a PDF's
pages and text, a page's nesting depth and element count, every format's text. (HTML was
once walked as a Beautiful Soup tree, inserting breaks around each block: each insertion
walked the block's descendants, quadratic in the nesting depth, and Python's
``html.parser`` itself rescans the rest of the page for some malformed tags.)
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from raypipe.config import Settings
from raypipe.exceptions import PermanentError, reason

if TYPE_CHECKING:
    from markdown_it.token import Token

FORMATS = ("txt", "md", "html", "pdf")
EXTENSIONS = {
    ".txt": "txt",
    ".text": "txt",
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}

#: Leading bytes of formats people send by mistake, to name them in the error.
SIGNATURES = (
    (b"%PDF-", "a PDF"),
    (b"PK\x03\x04", "a ZIP archive (.docx, .xlsx, .odt, …)"),
    (b"\xd0\xcf\x11\xe0", "an OLE2 file (.doc, .xls)"),
    (b"{\\rtf", "an RTF file"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip file"),
)
#: The PDF header may follow some junk, within the first KiB.
PDF_HEADER_WINDOW = 1024

#: Elements whose text is never document text.
HTML_DROPPED = frozenset(
    ("script", "style", "noscript", "template", "head", "svg", "iframe", "object")
)
#: Elements that start a new block: they become paragraph breaks in the text.
HTML_BLOCKS = frozenset((
    "address", "article", "aside", "blockquote", "caption", "dd", "details", "div", "dl",
    "dt", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
    "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table",
    "tr", "ul",
))  # fmt: skip
HTML_CELLS = frozenset(("td", "th"))
#: How much of a page the parser is fed at a time: between feeds, Python code runs, so a
#: CPU budget's interruption lands even while libxml2 works through a long stretch.
HTML_FEED_BYTES = 1 << 20
#: How deep Markdown's blocks and inline markup may nest (its CommonMark preset's bound):
#: markdown-it's work on brackets grows with it (100 KB of ``[`` took 0.4 s at 20, 7 s at
#: 256). markdown-it drops what nests deeper without a word, so a document that does fails.
MARKDOWN_MAX_NESTING = 20

_SPACES = re.compile(r"[^\S\n]+")
_SOURCE_SPACE = re.compile(r"\s+")
_BLANK_LINES = re.compile(r"\n{3,}")


def resolve_format(
    explicit: str | None, filename: str | None, data: bytes | None, *, hint: str | None = None
) -> str:
    """The format to read a document as.

    ``explicit`` wins; then the extension of ``filename``, which must be a known one; then a
    known extension of ``hint`` (the path of the URL or the name of the artifact the bytes
    came from, which may well end in ``.php``); then the bytes (a PDF header, an HTML start),
    and plain text otherwise. ``data`` is ``None`` for inline text: txt unless told.
    """
    if explicit is not None:
        if explicit not in FORMATS:
            raise PermanentError(f"unsupported format {explicit!r} (supported: {_supported()})")
        return explicit
    if filename:
        suffix = PurePosixPath(filename).suffix.lower()
        if suffix:
            if suffix not in EXTENSIONS:
                raise PermanentError(
                    f"unsupported format {suffix!r} of {filename!r} (supported: {_supported()})"
                )
            return EXTENSIONS[suffix]
    if hint:
        suffix = PurePosixPath(hint).suffix.lower()
        if suffix in EXTENSIONS:
            return EXTENSIONS[suffix]
    if data is None:
        return "txt"
    if b"%PDF-" in data[:PDF_HEADER_WINDOW]:
        return "pdf"
    head = data[:PDF_HEADER_WINDOW].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "html"
    return "txt"


def _supported() -> str:
    return ", ".join(EXTENSIONS)


@dataclass(frozen=True)
class Limits:
    """What one document may expand to: a small file can hold a great many pages, or pages
    that share one content stream (a thousandfold more text than its size), and a page
    its elements nested as deep and as many as its bytes allow."""

    chars: int
    pages: int
    depth: int
    nodes: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            chars=settings.documents.max_chars,
            pages=settings.documents.max_pages,
            depth=settings.documents.max_depth,
            nodes=settings.documents.max_nodes,
        )


def extract_text(data: bytes | str, fmt: str, limits: Limits) -> str:
    """The text of a document of format ``fmt``, with whitespace tidied: single spaces,
    paragraphs separated by one blank line. Empty or unreadable input, or more than
    ``limits`` allow: PermanentError."""
    if fmt not in FORMATS:
        raise PermanentError(f"unsupported format {fmt!r} (supported: {', '.join(FORMATS)})")
    if fmt == "pdf":
        if isinstance(data, str):
            raise PermanentError("a PDF must be given as bytes, not as text")
        text = pdf_text(data, limits)
        if not text:
            raise PermanentError("the PDF has no extractable text (a scanned PDF needs OCR first)")
        return text
    if isinstance(data, bytes):
        _refuse_binary(data, fmt)
    if fmt == "html":
        text = html_text(data, limits)
    else:
        raw = data if isinstance(data, str) else decode_utf8(data)
        text = markdown_text(raw, limits) if fmt == "md" else normalize_whitespace(raw)
    if not text:
        raise PermanentError(f"the document has no text (format {fmt})")
    _bound(len(text), limits.chars)
    return text


def _bound(chars: int, max_chars: int) -> None:
    if chars > max_chars:
        raise PermanentError(
            f"the document's text is longer than {max_chars:,} characters"
            " (RAYPIPE_MAX_DOCUMENT_CHARS)"
        )


def _refuse_binary(data: bytes, fmt: str) -> None:
    """Refuse bytes that are plainly some other format than ``fmt``, naming what they are."""
    for signature, name in SIGNATURES:
        if data.startswith(signature):
            raise PermanentError(f"the file is {name}, not {fmt}: set filename or format")
    if b"\x00" in data[:PDF_HEADER_WINDOW]:
        raise PermanentError(f"the file holds binary data, not {fmt} text")


def decode_utf8(data: bytes) -> str:
    """UTF-8 (a byte-order mark is dropped), or a PermanentError saying where it breaks."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PermanentError(
            f"the text is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


def normalize_whitespace(text: str) -> str:
    """Single spaces within lines, no trailing spaces, at most one blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def markdown_text(source: str, limits: Limits) -> str:
    """Markdown rendered to HTML by markdown-it (CommonMark and tables), then read as HTML:
    link and image targets, emphasis, code fences and heading marks all go. Nesting deeper
    than :data:`MARKDOWN_MAX_NESTING` is a PermanentError (markdown-it would drop the text
    in it); the HTML it makes, raw HTML blocks included, is held to ``limits`` like any
    page."""
    from markdown_it import MarkdownIt

    # One level more than the limit is parsed, so that reaching it shows in the tokens
    # rather than as text markdown-it left out.
    options = {"html": True, "maxNesting": MARKDOWN_MAX_NESTING + 1}
    markdown = MarkdownIt("commonmark", options).enable("table")
    env: dict[str, Any] = {}
    tokens = markdown.parse(source, env)
    if _deepest(tokens) > MARKDOWN_MAX_NESTING:
        raise PermanentError(
            f"the Markdown nests blocks or inline markup more than {MARKDOWN_MAX_NESTING}"
            " deep (the Markdown nesting limit): the text deeper in would be lost"
        )
    return html_text(markdown.renderer.render(tokens, markdown.options, env), limits)


def _deepest(tokens: Sequence[Token]) -> int:
    """The deepest level markdown-it's tokens reach, inline markup's own levels included."""
    deepest = 0
    for token in tokens:
        deepest = max(deepest, token.level + (token.nesting == 1))
        if token.children:
            deepest = max(deepest, _deepest(token.children))
    return deepest


def html_text(markup: bytes | str, limits: Limits) -> str:
    """The visible text of an HTML page: no script, style or head; blocks become
    paragraphs, ``<br>`` a line break, an image its alt text; table cells stay apart.

    lxml's parser (libxml2) hands each tag and text to :class:`_HtmlText` as it reads
    them: no tree is built or walked, so the work is linear in the page's size, and a
    page nesting deeper than ``limits.depth`` or with more than ``limits.nodes`` elements
    is refused as soon as the parser gets there (PermanentError naming the setting)."""
    from lxml import etree

    data, encoding = _html_bytes(markup)
    text = _HtmlText(limits)
    parser = etree.HTMLParser(target=text, encoding=encoding, no_network=True)
    try:
        for start in range(0, len(data), HTML_FEED_BYTES):
            parser.feed(data[start : start + HTML_FEED_BYTES])
        parser.close()
    except etree.XMLSyntaxError:
        pass  # nothing the parser could call a document: no text, said by the caller
    return text.text()


def _html_bytes(markup: bytes | str) -> tuple[bytes, str | None]:
    """The page as bytes and the encoding to read them in: UTF-8 when they are UTF-8 (a
    byte-order mark is dropped), else ``None``: the page's own ``<meta charset>``, or
    libxml2's default (Latin-1)."""
    if isinstance(markup, str):
        return markup.encode("utf-8", "replace"), "utf-8"  # lone surrogates become "?"
    data = markup.removeprefix(b"\xef\xbb\xbf")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return data, None
    return data, "utf-8"


class _HtmlText:
    """lxml's parser target: the text of a page, gathered while it is parsed.

    Tags arrive as balanced start and end events (the parser closes what the page left
    open), so two counters say whether the text is inside a dropped element or a
    ``<pre>``; nothing looks at an element's ancestors or descendants."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.pieces: list[str] = []
        self.depth = 0
        self.elements = 0
        self.dropped = 0  # >0: inside an element whose text is not document text
        self.pre = 0  # >0: inside <pre>, whose whitespace is kept

    def start(self, tag: str, attrib: Mapping[str, str]) -> None:
        self.depth += 1
        self.elements += 1
        if self.depth > self.limits.depth:
            raise PermanentError(
                f"the HTML nests elements more than {self.limits.depth:,} deep"
                " (RAYPIPE_MAX_DOCUMENT_DEPTH)"
            )
        if self.elements > self.limits.nodes:
            raise PermanentError(
                f"the HTML has more than {self.limits.nodes:,} elements"
                " (RAYPIPE_MAX_DOCUMENT_NODES)"
            )
        if self.dropped or tag in HTML_DROPPED:
            self.dropped += 1
        elif tag in HTML_BLOCKS:
            self.pieces.append("\n\n")
        elif tag == "br":
            self.pieces.append("\n")
        elif tag == "img":
            self.pieces.append(_SOURCE_SPACE.sub(" ", attrib.get("alt") or ""))
        if tag == "pre":
            self.pre += 1

    def end(self, tag: str) -> None:
        self.depth -= 1
        if tag == "pre":
            self.pre -= 1
        if self.dropped:
            self.dropped -= 1
        elif tag in HTML_BLOCKS:
            self.pieces.append("\n\n")
        elif tag in HTML_CELLS:
            self.pieces.append(" ")

    def data(self, text: str) -> None:
        if not self.dropped:
            # Whitespace in HTML source is one space, except inside <pre>.
            self.pieces.append(text if self.pre else _SOURCE_SPACE.sub(" ", text))

    def close(self) -> None:
        """Called by the parser at the end; the text is read with :meth:`text`."""

    def text(self) -> str:
        return normalize_whitespace("".join(self.pieces))


def pdf_text(data: bytes, limits: Limits) -> str:
    """The text of every page, in order. Pages are joined by a line break, not a paragraph
    break, as sentences run on across them. Not a PDF, corrupt, encrypted with a password,
    more pages than ``limits.pages`` (counted before any is read) or more text than
    ``limits.chars`` (found page by page, so a bomb stops early): PermanentError naming
    which."""
    if b"%PDF-" not in data[:PDF_HEADER_WINDOW]:
        raise PermanentError("the file is not a PDF (no %PDF- header)")
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PyPdfError

    with warnings.catch_warnings():
        # pypdf warns about the many small defects it repairs; a readable page is enough.
        warnings.simplefilter("ignore")
        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                raise PermanentError("the PDF is encrypted: it needs a password to open")
            if len(reader.pages) > limits.pages:
                raise PermanentError(
                    f"the PDF has {len(reader.pages):,} pages, more than {limits.pages:,}"
                    " (RAYPIPE_MAX_DOCUMENT_PAGES)"
                )
            pages, chars = [], 0
            for page in reader.pages:
                pages.append(page.extract_text() or "")
                chars += len(pages[-1])
                _bound(chars, limits.chars)
        except PermanentError:
            raise
        except (FileNotDecryptedError, DependencyError) as exc:
            raise PermanentError(
                f"the PDF is encrypted and cannot be opened: {reason(exc)}"
            ) from None
        except (PyPdfError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            # Corrupt files surface as whatever the parser tripped over.
            raise PermanentError(
                f"the PDF cannot be read (corrupt or truncated): {type(exc).__name__}:"
                f" {reason(exc)}"
            ) from None
    text = normalize_whitespace("\n".join(pages))
    _bound(len(text), limits.chars)
    return text
