"""The commands that read and edit the configuration file (issue 8).

Each group is a typer app that :mod:`smtpgate.cli` registers; all edits go
through :mod:`smtpgate.config.editing` and are saved by
:mod:`smtpgate.config.store`.
"""
