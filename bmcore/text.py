"""User text shown as text: one helper for every page, message and report.

Case ids, file names (uploads and ZIP members), notes, specimen details, user names and the messages that quote them
are typed or uploaded by people, and the app draws most text through Streamlit's Markdown (titles, messages,
captions, labels, help): a case id ``![](http://host/x.png)`` would be fetched as an image by everyone who opens the
case, and a URL in a file name would become a live link. ``md`` makes any such string literal text inside Markdown;
``clean`` removes what no display should carry (control characters, bidirectional overrides such as U+202E that
reverse how a file name reads, zero-width and other invisible format characters).
"""

from __future__ import annotations

import re
import string
import unicodedata

_PUNCT = frozenset(string.punctuation)  # CommonMark lets a backslash escape any ASCII punctuation


def clean(value) -> str:
    """``value`` as a display string: control characters (C0, DEL, C1) and invisible format characters (Unicode
    category Cf: bidirectional embeddings, overrides and isolates, zero-width spaces and joiners) removed; tabs and
    line breaks become spaces."""
    s = "" if value is None else str(value)
    return "".join(" " if ch in "\t\n\r\v\f\x85\u2028\u2029" else ch for ch in s
                   if ch in "\t\n\r\v\f\x85\u2028\u2029" or unicodedata.category(ch) not in ("Cc", "Cf"))


# Streamlit's renderer links bare URLs in the text it draws (http://, www., a@b) even when their characters are
# backslash-escaped or written as character references (both seen in Chromium): a WORD JOINER (U+2060, invisible,
# no line break) breaks each such start. ``clean`` removes it from what users type, so every one drawn is ours.
JOINER = "\u2060"
_AUTOLINK = re.compile(r"(?<=:)(?=//)|(?<=www)(?=\.)|(?<=@)", re.I)


def md(value) -> str:
    """``value`` as literal text inside Streamlit Markdown (messages, captions, labels, help): ``clean``, every ASCII
    punctuation mark backslash-escaped and each bare-URL start broken by an invisible joiner, so that no link, image,
    emphasis, HTML, autolink (``http://``, ``www.``, ``a@b``), Streamlit directive (``:red[...]``, ``:material/...:``)
    or LaTeX (``$``) can form from it. The reader sees the text as typed."""
    text = _AUTOLINK.sub(JOINER, clean(value))
    return "".join("\\" + ch if ch in _PUNCT else ch for ch in text)


def has_hidden_characters(value: str) -> bool:
    """Whether ``value`` holds a character ``clean`` would remove or replace (tabs and line breaks included): stores
    refuse such case ids."""
    return clean(value) != value


# OWASP "CSV injection": a spreadsheet reads a cell that starts with one of these as a formula
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value):
    """A CSV cell that no spreadsheet runs as a formula: a text starting with ``= + - @``, tab or carriage return gets
    a leading ``'`` (OWASP's rule); numbers and other values are left as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value
