"""``[console] retention`` and ``database`` (docs/configuration.md): defaults, and
errors that name the key."""

from __future__ import annotations

from smtpgate.traffic.database import TrafficDatabase
from tests.config.config_testkit import errors_of, load


def test_defaults_keep_thirty_days_in_sqlite() -> None:
    console = load("").console
    assert console.retention == 30 * 86_400
    assert console.database is None


def test_retention_takes_the_duration_syntax_and_database_a_postgresql_url() -> None:
    console = load(
        '[console]\nretention = "7d12h"\ndatabase = "postgresql://gate:pw@db.example:5432/mail"\n'
    ).console
    assert console.retention == 7.5 * 86_400
    assert console.database == "postgresql://gate:pw@db.example:5432/mail"


def test_bad_values_name_the_key() -> None:
    assert dict(errors_of('[console]\nretention = "a month"\ndatabase = "mysql://x/y"\n')) == {
        "console.retention": "invalid duration 'a month'; write e.g. 30s, 5m, 1h or 1h30m",
        "console.database": (
            "write a PostgreSQL URL, postgresql://user:password@host:5432/name "
            "(leave it out for the SQLite file in gateway.state_dir)"
        ),
    }


def test_records_name_the_database_without_its_password() -> None:
    shown = {
        "postgresql://gate:secret@db.example:5432/mail": "postgresql://gate@db.example:5432/mail",
        "postgresql://db.example/mail?user=gate&password=secret&sslmode=verify-full": (
            "postgresql://db.example/mail?user=gate&sslmode=verify-full"
        ),
        "postgresql:///mail?password=secret": "postgresql:///mail",
        "postgresql:///mail?host=/run/pg&user=gate": "postgresql:///mail?host=/run/pg&user=gate",
    }
    for url, where in shown.items():
        assert TrafficDatabase(url=url).where == where
