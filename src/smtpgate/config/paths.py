"""Path fields: empty means unset, relative means relative to the file's folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, ValidationInfo, WithJsonSchema
from pydantic_core import PydanticCustomError

BASE_DIR_CONTEXT_KEY = "base_dir"
"""Validation context key: folder that relative paths are resolved against."""


def _to_path(value: object, info: ValidationInfo) -> Path:
    if isinstance(value, Path):
        path = value
    elif isinstance(value, str):
        if "\x00" in value:
            raise PydanticCustomError("path", "path contains a NUL character")
        path = Path(value).expanduser()
    else:
        raise PydanticCustomError("path_type", "expected a path string")
    context: Any = info.context
    if not path.is_absolute() and isinstance(context, dict):
        base = context.get(BASE_DIR_CONTEXT_KEY)
        if base is not None:
            path = Path(base) / path
    return path


def _optional_path(value: object, info: ValidationInfo) -> Path | None:
    if value is None or value == "":
        return None
    return _to_path(value, info)


def _required_path(value: object, info: ValidationInfo) -> Path:
    if value == "":
        raise PydanticCustomError("path_empty", "path must not be empty")
    return _to_path(value, info)


def _path_text(value: Path | None) -> str:
    return "" if value is None else str(value)


OptionalPath = Annotated[
    Path | None,
    PlainValidator(_optional_path),
    PlainSerializer(_path_text),
    WithJsonSchema({"type": "string"}),
]
"""A path or ``""`` (stored as ``None``)."""

RequiredPath = Annotated[
    Path,
    PlainValidator(_required_path),
    PlainSerializer(_path_text),
    WithJsonSchema({"type": "string", "minLength": 1}),
]
"""A non-empty path."""
