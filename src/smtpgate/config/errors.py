"""Configuration errors, each tied to the key path it concerns.

Key paths are shown with 1-based list positions (``policies[1]`` is the first
``[[policies]]`` table), as logs and ``smtpgate rules test`` count rules; the
tuple form (:data:`Loc`) keeps Python's 0-based indexes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Loc = tuple[str | int, ...]
"""A key path as a tuple with 0-based indexes, e.g.
``("proxy_actions", 0, "starttls", "rules", 1, "sender")``, shown as
``proxy_actions[1].starttls.rules[2].sender``."""


def format_loc(loc: Sequence[str | int]) -> str:
    """``("a", 0, "b")`` -> ``"a[1].b"`` (1-based, as users count)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            out += f".{part}" if out else part
    return out


class ConfigError(Exception):
    """One or more problems in a configuration.

    ``errors`` holds ``(key path, reason)`` pairs; ``str()`` gives one
    ``path: reason`` line per error (just ``reason`` when the path is empty).
    ``located`` keeps the same errors with tuple paths, for remapping.
    """

    def __init__(self, errors: Iterable[tuple[str, str]]) -> None:
        self.errors: list[tuple[str, str]] = list(errors)
        self.located: list[tuple[Loc, str]] = [
            ((path,) if path else (), r) for path, r in self.errors
        ]
        super().__init__(str(self))

    @classmethod
    def at(cls, located: Iterable[tuple[Loc, str]]) -> ConfigError:
        """Build from tuple key paths."""
        pairs = list(located)
        error = cls((format_loc(loc), reason) for loc, reason in pairs)
        error.located = pairs
        return error

    def __str__(self) -> str:
        return "\n".join(f"{path}: {reason}" if path else reason for path, reason in self.errors)
