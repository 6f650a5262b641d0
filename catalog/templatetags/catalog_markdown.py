"""``{{ product.guide_markdown|guide_html }}``: an admin's Markdown, rendered then sanitised.

Markdown passes raw HTML through untouched, so its output is never trusted: ``nh3``
keeps only the tags and attributes listed here, only http(s) and mailto links, drops
``<script>``/``<style>``/``<iframe>`` together with their content, and gives every
link ``rel="noopener noreferrer"``. The guide is never rendered as a Django template.
"""

from __future__ import annotations

import markdown  # type: ignore[import-untyped]  # no types-Markdown in requirements-dev yet
import nh3
from django import template
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

MARKDOWN_EXTENSIONS = ["fenced_code", "tables", "sane_lists"]

ALLOWED_TAGS = {
    "a",
    "abbr",
    "b",
    "blockquote",
    "br",
    "code",
    "dd",
    "del",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "li",
    "ol",
    "p",
    "pre",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "th",
    "thead",
    "tr",
    "ul",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "abbr": {"title"},
    "img": {"src", "alt", "title"},
}
# Removed with everything inside them, not just unwrapped to their text.
CONTENT_REMOVED_TAGS = {"script", "style", "iframe", "object", "embed", "template", "noscript"}
URL_SCHEMES = {"http", "https", "mailto"}


def render_guide(text: str) -> str:
    """Markdown to HTML that is safe to insert into a portal page."""
    html = markdown.markdown(text, extensions=MARKDOWN_EXTENSIONS, output_format="html")
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        clean_content_tags=CONTENT_REMOVED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer",
        strip_comments=True,
    )


@register.filter(is_safe=False)
def guide_html(text: str | None) -> SafeString:
    # mark_safe is right only because render_guide's output passed the sanitiser.
    return mark_safe(render_guide(text or ""))  # noqa: S308
