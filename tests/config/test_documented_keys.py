"""docs/configuration.md documents every key the schema accepts, and no other,
each with its default: compared here so the reference cannot drift from the code."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from smtpgate.config.schema import Config

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
_HEADING = re.compile(r"^#{2,3} (?:`\[{1,2}(?P<section>[a-z_.]+)\]{1,2}`|(?P<top>Top level))\s*$")
#: Defaults worked out at load time, documented as how they are found.
COMPUTED_DEFAULTS = {("gateway", "hostname")}
_NAME = re.compile(r"`\[{0,2}([a-z_.]+)\]{0,2}`")


def _sub_model(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (itself, or in a tuple), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (tuple, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _sub_model(arg)
            if found is not None:
                return found
    return None


def schema_sections() -> dict[str, dict[str, Any]]:
    """Section name ("" for the top level) -> {key: the field's info}."""
    sections: dict[str, dict[str, Any]] = {}

    def walk(model: type[BaseModel], name: str) -> None:
        keys = sections.setdefault(name, {})
        for key, field in model.model_fields.items():
            keys[key] = field
            inner = _sub_model(field.annotation)
            if inner is not None:
                walk(inner, f"{name}.{key}" if name else key)

    walk(Config, "")
    return sections


def documented_sections() -> dict[str, dict[str, list[str]]]:
    """Section -> {key: the row's cells} from the reference's tables."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: str | None = None
    for line in REFERENCE.read_text().splitlines():
        heading = _HEADING.match(line)
        if heading:
            current = heading["section"] or ""
            sections.setdefault(current, {})
            continue
        if line.startswith("#"):
            current = None
            continue
        if current is None or not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        for name in _NAME.findall(cells[0]):
            key = name.removeprefix(f"{current}.") if current else name
            sections[current][key] = cells
    return sections


def test_every_key_of_the_schema_has_a_row_and_every_row_a_key() -> None:
    schema = schema_sections()
    documented = documented_sections()
    for section, fields in schema.items():
        rows = documented.get(section)
        # A sub-table may be one row of its parent's table that lists its keys.
        parent, _, key = section.rpartition(".")
        if rows is None and key in documented.get(parent, {}):
            text = " ".join(documented[parent][key][1:])
            missing = [name for name in fields if f"`{name}`" not in text]
            assert missing == [], f"[{section}]: keys not in its row: {missing}"
            continue
        assert rows is not None, f"no table for [{section}] in {REFERENCE.name}"
        # A key holding a table with a heading of its own needs no row (it may have one).
        own_heading = {
            key for key in fields if (f"{section}.{key}" if section else key) in documented
        }
        wanted = set(fields) - own_heading
        assert wanted <= set(rows) <= set(fields), (
            f"[{section}]: undocumented {sorted(wanted - set(rows))}, "
            f"not in the schema {sorted(set(rows) - set(fields))}"
        )


def test_every_row_gives_a_default_and_simple_defaults_match_the_schema() -> None:
    schema = schema_sections()
    for section, rows in documented_sections().items():
        for key, cells in rows.items():
            assert len(cells) >= 3 and cells[1], f"[{section}] {key}: no default column"
            field = schema.get(section, {}).get(key)
            if field is None or field.is_required() or (section, key) in COMPUTED_DEFAULTS:
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, bool):
                shown = "true" if default else "false"
            elif isinstance(default, int):
                shown = str(default)
            elif isinstance(default, str) and default:
                shown = f'"{default}"'
            else:
                continue
            # Digits may be grouped for reading: 25 000 000.
            cell = re.sub(r"(?<=\d)[ _](?=\d)", "", cells[1])
            assert shown in cell, f"[{section}] {key}: documented {cells[1]}, schema {shown}"
