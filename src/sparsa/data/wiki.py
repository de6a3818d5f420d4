"""Wikipedia XML dump -> plain article text, cleaned of wiki markup deterministically.

The clean-up is a fixed sequence of regular expressions (no randomness, no external parser),
so the same dump always gives the same text: comments, references, templates, tables, files,
categories and HTML go; links keep their shown text; headings keep their words.
"""

import bz2
import html
import io
import re
import xml.etree.ElementTree as ET

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|.*?\|\}", re.S)
_INNER_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_DROPPED_LINK = re.compile(r"^(?:file|image|category|media|[a-z]{2,3}(?:-[a-z]+)?):", re.I)
_EXTERNAL = re.compile(r"\[(?:https?|ftp)://[^\s\]]*\s*([^\]]*)\]")
_BARE_URL = re.compile(r"(?:https?|ftp)://\S+")
_QUOTES = re.compile(r"'{2,5}")
_HEADING = re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M)
_TAG = re.compile(r"<[^>]+>")
_MAGIC = re.compile(r"__[A-Z]+__")
_LIST = re.compile(r"^[*#:;]+\s*", re.M)
_SPACES = re.compile(r"[ \t\u00a0]+")


def _repeat(pattern: re.Pattern, repl, text: str) -> str:
    """Apply ``pattern.sub`` until nothing changes (for nested constructs)."""
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return text
        text = new


def _link_text(match: re.Match) -> str:
    target = match.group(1)
    if _DROPPED_LINK.match(target):
        return ""
    return target.rsplit("|", 1)[-1]


def clean_wikitext(markup: str) -> str:
    """Plain text of one article's wikitext (paragraphs separated by blank lines)."""
    text = _COMMENT.sub("", markup)
    text = _REF.sub("", text)
    text = _repeat(_TEMPLATE, "", text)
    text = _repeat(_TABLE, "", text)
    text = _repeat(_INNER_LINK, _link_text, text)
    text = _EXTERNAL.sub(r"\1", text)
    text = _BARE_URL.sub("", text)
    text = _QUOTES.sub("", text)
    text = _HEADING.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = _MAGIC.sub("", text)
    text = _LIST.sub("", html.unescape(text))
    lines = []
    for line in text.split("\n"):
        line = _SPACES.sub(" ", line).strip()
        if line and line[0] in "|!{}":  # debris of tables and templates
            continue
        lines.append(line)
    paragraphs = "\n".join(lines).split("\n\n")
    return "\n\n".join(p.strip() for p in paragraphs if p.strip())


def article_pages(dump_bz2: bytes) -> list[tuple[str, str]]:
    """(title, clean text) of every main-namespace, non-redirect page of a bz2 XML dump, in dump order."""
    pages = []
    for _, elem in ET.iterparse(io.BytesIO(bz2.decompress(dump_bz2))):
        if not elem.tag.endswith("}page"):
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: child for child in elem.iter()}
        markup = fields["text"].text if "text" in fields else None
        if fields["ns"].text == "0" and "redirect" not in fields and markup:
            text = clean_wikitext(markup)
            if text:
                pages.append((fields["title"].text, text))
        elem.clear()
    return pages
