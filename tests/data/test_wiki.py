"""Wiki markup clean-up: deterministic, keeps the words people read, drops the markup."""

import bz2

from sparsa.data.wiki import article_pages, clean_wikitext

MARKUP = """{{Infobox person|name=Ada {{nowrap|Lovelace}}}}
'''Ada Lovelace''' was an [[England|English]] [[mathematician]].<ref name="x">Toole, p. 1</ref>
She wrote about the [[Analytical Engine]]<ref>Cite</ref>.<!-- hidden note -->

== Early life ==
[[File:Ada.jpg|thumb|A portrait of [[Ada Lovelace|Ada]]]]
* She was born in [http://example.org London] in 1815 &amp; raised there.
{| class="wikitable"
| cell || other
|}
[[Category:Mathematicians]]
__NOTOC__
"""

EXPECTED = """Ada Lovelace was an English mathematician.
She wrote about the Analytical Engine.

Early life
She was born in London in 1815 & raised there."""


def test_clean_wikitext_sample_article_gives_plain_text():
    assert clean_wikitext(MARKUP) == EXPECTED


def test_clean_wikitext_plain_text_unchanged():
    assert clean_wikitext("Just words.\n\nTwo paragraphs.") == "Just words.\n\nTwo paragraphs."


def dump(*pages: str) -> bytes:
    ns = "http://www.mediawiki.org/xml/export-0.10/"
    return bz2.compress(f'<mediawiki xmlns="{ns}">{"".join(pages)}</mediawiki>'.encode())


def page(title: str, text: str, ns: int = 0, redirect: bool = False) -> str:
    extra = '<redirect title="X" />' if redirect else ""
    return (f"<page><title>{title}</title><ns>{ns}</ns>{extra}<revision><text>{text}</text>"
            f"</revision></page>")


def test_article_pages_keeps_main_namespace_articles_only():
    pages = article_pages(dump(page("A", "Alpha [[beta]]."), page("Talk:A", "chat", ns=1),
                               page("R", "#REDIRECT [[A]]", redirect=True), page("Empty", "{{stub}}"),
                               page("B", "Bravo.")))
    assert pages == [("A", "Alpha beta."), ("B", "Bravo.")]
