"""Benchmarks: ``python -m bench`` runs them all, ``python -m bench codec`` one of them.

Each benchmark is a module here with ``run() -> dict`` (the figures) and,
optionally, ``report(result) -> str`` (a table for people).
"""
