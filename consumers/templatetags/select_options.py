"""``{% select_options choices selected %}``: the ``<option>`` elements of a long ``<select>``.

A developer may own a thousand apps, and a ``{% for %}`` loop costs tens of microseconds
per option in the template engine: a thousand options took longer than the rest of the
page together. Built here in one pass, they cost about a microsecond each; values and
labels are escaped like any ``{{ variable }}``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

from django import template
from django.utils.safestring import SafeString, mark_safe

register = template.Library()


def _escape(value: object) -> str:
    # What conditional_escape does, without its lazy-text wrappers: they cost a few
    # microseconds a call, and the usage page's filters make thousands of calls.
    if type(value) is int:  # the usual value, a primary key: nothing to escape
        return str(value)
    if hasattr(value, "__html__"):
        return str(value.__html__())
    return html.escape(str(value))


@register.simple_tag
def select_options(choices: Iterable[tuple[object, object]], selected: object = None) -> SafeString:
    """One ``<option value="…">label</option>`` per ``(value, label)``; the one whose
    value equals ``selected`` (compared as text, so ``3`` matches ``"3"``) is selected."""
    wanted = None if selected is None or selected == "" else str(selected)
    return mark_safe(  # noqa: S308 -- every value and label is escaped above
        "".join(
            f'<option value="{_escape(value)}"'
            f"{' selected' if wanted is not None and str(value) == wanted else ''}>"
            f"{_escape(label)}</option>"
            for value, label in choices
        )
    )
