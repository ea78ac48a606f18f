"""The traffic store behind the console's Traffic and Coverage pages (docs/api.md).

One row per ``transaction`` record of the event log, written off the mail
path (:mod:`.store`) to SQLite or PostgreSQL (:mod:`.database`); the
coverage figures and rule suggestions are computed from it (:mod:`.coverage`).
"""
