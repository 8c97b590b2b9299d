"""Plain text out of a document: txt, Markdown, HTML or PDF.

The format comes from an explicit choice, else the file name's extension, else the bytes
themselves; bytes that contradict the declared format are refused rather than parsed into
garbage. Parsers are imported when first needed, so the API process that only validates
payloads never loads them.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from raypipe.config import Settings
from raypipe.exceptions import PermanentError

if TYPE_CHECKING:
    from bs4 import BeautifulSoup

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
HTML_DROPPED = ("script", "style", "noscript", "template", "head", "svg", "iframe", "object")
#: Elements that start a new block: they become paragraph breaks in the text.
HTML_BLOCKS = (
    "address", "article", "aside", "blockquote", "caption", "dd", "details", "div", "dl",
    "dt", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
    "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table",
    "tr", "ul",
)  # fmt: skip
HTML_CELLS = ("td", "th")

_SPACES = re.compile(r"[^\S\n]+")
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
    that share one content stream (a thousandfold more text than its size)."""

    chars: int
    pages: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.max_document_chars, settings.max_document_pages)


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
        text = html_text(data)
    else:
        raw = data if isinstance(data, str) else decode_utf8(data)
        text = markdown_text(raw) if fmt == "md" else normalize_whitespace(raw)
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


def markdown_text(source: str) -> str:
    """Markdown rendered to HTML by markdown-it (CommonMark and tables), then read as HTML:
    link and image targets, emphasis, code fences and heading marks all go."""
    from markdown_it import MarkdownIt

    renderer = MarkdownIt("commonmark", {"html": True}).enable("table")
    return html_text(renderer.render(source))


def html_text(markup: bytes | str) -> str:
    """The visible text of an HTML page: no script, style or head; blocks become
    paragraphs, ``<br>`` a line break, an image its alt text; table cells stay apart."""
    soup = _soup(markup)
    for tag in soup.find_all(HTML_DROPPED):
        tag.decompose()
    _collapse_source_whitespace(soup)
    for image in soup.find_all("img"):
        image.replace_with(str(image.get("alt") or ""))
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for tag in soup.find_all(HTML_CELLS):
        tag.insert_after(" ")
    for tag in soup.find_all(HTML_BLOCKS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    return normalize_whitespace(soup.get_text())


def _soup(markup: bytes | str) -> BeautifulSoup:
    from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, XMLParsedAsHTMLWarning

    with warnings.catch_warnings():
        # A page that looks like a file name or XML is still read as HTML, on purpose.
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        return BeautifulSoup(markup, "html.parser")


def _collapse_source_whitespace(soup: BeautifulSoup) -> None:
    """Whitespace in HTML source is one space, except inside ``<pre>``."""
    from bs4 import NavigableString

    for string in list(soup.find_all(string=True)):
        if type(string) is not NavigableString or string.find_parent("pre") is not None:
            continue  # comments, doctypes and friends are not text; <pre> keeps its lines
        collapsed = re.sub(r"\s+", " ", str(string))
        if collapsed != string:
            string.replace_with(collapsed)


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
            raise PermanentError(f"the PDF is encrypted and cannot be opened: {exc}") from None
        except (PyPdfError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            # Corrupt files surface as whatever the parser tripped over.
            raise PermanentError(
                f"the PDF cannot be read (corrupt or truncated): {type(exc).__name__}: {exc}"
            ) from None
    text = normalize_whitespace("\n".join(pages))
    _bound(len(text), limits.chars)
    return text
