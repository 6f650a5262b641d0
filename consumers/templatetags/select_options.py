"""``{% select_options choices selected %}``: the ``<option>`` elements of a long ``<select>``.

A developer may own a thousand apps, and a ``{% for %}`` loop costs tens of microseconds
per option in the template engine: a thousand options took longer than the rest of the
page together. Built here in one pass, they cost about a microsecond each; values and
labels are escaped like any ``{{ variable }}``.
"""

from __future__ import annotations

from collections.abc import Iterable

from django import template
from django.utils.html import format_html_join
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

_SELECTED = mark_safe(" selected")
_NOT_SELECTED = mark_safe("")


@register.simple_tag
def select_options(choices: Iterable[tuple[object, object]], selected: object = None) -> SafeString:
    """One ``<option value="…">label</option>`` per ``(value, label)``; the one whose
    value equals ``selected`` (compared as text, so ``3`` matches ``"3"``) is selected."""
    wanted = None if selected is None or selected == "" else str(selected)
    return format_html_join(
        "",
        '<option value="{}"{}>{}</option>',
        (
            (
                value,
                _SELECTED if wanted is not None and str(value) == wanted else _NOT_SELECTED,
                label,
            )
            for value, label in choices
        ),
    )
