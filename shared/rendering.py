"""Personalised texts: `{first_name}` placeholders filled from each recipient's fields.

Only bare names are allowed. `str.format` would also follow `{user.__class__}` or
`{items[0]}` and apply format specs, which lets a text read attributes of whatever object is
passed in; here a text is cut once into literal parts and names, and filling it is string
concatenation, so no text can run or reach anything but the values it was given."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass

_FORMATTER = string.Formatter()


class TemplateError(ValueError):
    """A text that is not a valid template; the message says what to change."""


class MissingField(KeyError):
    """A placeholder with no value for one recipient; `.field` names it."""

    def __init__(self, field: str):
        super().__init__(field)
        self.field = field


@dataclass(frozen=True)
class Template:
    """A text cut into literal parts and placeholder names (`parts[i]` precedes `names[i]`;
    there is one more part than names)."""

    parts: tuple[str, ...]
    names: tuple[str, ...]

    @property
    def personalised(self) -> bool:
        return bool(self.names)

    def render(self, fields: Mapping[str, object]) -> str:
        """The text with every placeholder filled; MissingField names the first one
        without a value."""
        if not self.names:
            return self.parts[0]
        pieces = [self.parts[0]]
        for name, part in zip(self.names, self.parts[1:], strict=True):
            value = fields.get(name)
            if value is None:
                raise MissingField(name)
            pieces.append(value if isinstance(value, str) else str(value))
            pieces.append(part)
        return "".join(pieces)


def parse(text: str) -> Template:
    """Cut `text` into a Template, or raise TemplateError naming the problem. `{{` and `}}`
    stand for literal braces."""
    parts: list[str] = []
    names: list[str] = []
    literal = ""
    try:
        pieces = list(_FORMATTER.parse(text))
    except ValueError as error:
        raise TemplateError(f"{error} (write {{{{ and }}}} for literal braces)") from None
    for text_part, name, spec, conversion in pieces:
        literal += text_part
        if name is None:
            continue
        if not name.isidentifier():
            what = "an empty placeholder {}" if name == "" else f"placeholder {{{name}}}"
            raise TemplateError(
                f"{what}: only names such as {{first_name}} are allowed (no attributes, "
                "indexes or positions; write {{ and }} for literal braces)"
            )
        if spec or conversion:
            raise TemplateError(
                f"placeholder {{{name}}}: no format specs or conversions (! or :) allowed"
            )
        parts.append(literal)
        names.append(name)
        literal = ""
    parts.append(literal)
    return Template(tuple(parts), tuple(names))


def field_values(value: object) -> dict[str, str] | None:
    """A `fields` object as names to strings, or None if it is not one (values must be
    strings or numbers: anything else would print as Python, not as the sender meant)."""
    if not isinstance(value, dict):
        return None
    fields: dict[str, str] = {}
    for name, item in value.items():
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            return None
        fields[name] = item if isinstance(item, str) else str(item)
    return fields
