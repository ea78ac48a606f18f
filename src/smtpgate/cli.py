"""Command line: the commands of SPEC.md section 6."""

from __future__ import annotations


def main() -> None:
    raise SystemExit("smtpgate: not built yet")
