"""Dispatcher: ``python -m bench [--json] [name ...]`` (``make bench`` runs them all)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from typing import Any

#: Every benchmark this dispatcher knows, in the order they run; missing modules are skipped.
KNOWN = ("codec", "proxy", "idle")


def available() -> list[str]:
    return [name for name in KNOWN if importlib.util.find_spec(f"bench.{name}") is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="name", help=f"one of {', '.join(KNOWN)}")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    present = available()
    names = args.names or present
    missing = [n for n in names if n not in present]
    if missing:
        parser.error(f"no such benchmark: {', '.join(missing)} (available: {', '.join(present)})")
    results: dict[str, Any] = {}
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        result = module.run()
        results[name] = result
        # A module with report() leaves printing to us; one without prints its own table.
        report = getattr(module, "report", None)
        if report is not None:
            print(report(result))
        print(f"({name}: {time.perf_counter() - started:.1f} s)\n", flush=True)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
