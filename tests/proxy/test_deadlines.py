"""ReadClock, sans-IO: the per-read timeout, the phase's deadline and the data-rate
budget, with the time given by the test."""

from __future__ import annotations

import pytest

from smtpgate.proxy.deadlines import ReadClock
from smtpgate.proxy.events import Side
from smtpgate.proxy.session import Wait

COMMAND = Wait(Side.CLIENT, 300, deadline=600, deadline_reason="command_deadline")
BODY = Wait(Side.CLIENT, 600, deadline=3600, deadline_reason="data_deadline", min_rate=500)
UPSTREAM = Wait(Side.UPSTREAM, 300)


def test_a_trickled_command_meets_its_deadline_and_the_next_command_gets_a_new_one() -> None:
    clock = ReadClock()
    assert clock.next_read(COMMAND, 0, now=0) == (300, "timeout")
    # One byte every 299 s: the timeout alone would never expire.
    assert clock.next_read(COMMAND, 0, now=299) == (300, "timeout")
    assert clock.next_read(COMMAND, 0, now=598) == (2, "command_deadline")
    assert clock.next_read(COMMAND, 0, now=601) == (0, "command_deadline")
    # The core took the command: the next one starts afresh.
    assert clock.next_read(COMMAND, 1, now=601) == (300, "timeout")


def test_a_wait_for_the_upstream_ends_the_phase() -> None:
    clock = ReadClock()
    clock.next_read(COMMAND, 3, now=0)
    assert clock.next_read(UPSTREAM, 3, now=500) == (300, "timeout")
    assert clock.next_read(COMMAND, 3, now=510) == (300, "timeout")


def test_data_rate_budget_grows_with_the_bytes_and_never_past_the_timeout() -> None:
    clock = ReadClock()
    assert clock.next_read(BODY, 5, now=0) == (600, "timeout")
    clock.received(BODY, 10, now=300)  # 10 bytes in 300 s: 0.02 s more
    assert clock.next_read(BODY, 5, now=300) == pytest.approx((300.02, "data_rate"))
    # A fast client: the budget is capped at one timeout ahead.
    clock.received(BODY, 10_000_000, now=301)
    assert clock.next_read(BODY, 5, now=301) == (600, "timeout")


def test_the_data_deadline_bounds_even_a_fast_client() -> None:
    clock = ReadClock()
    clock.next_read(BODY, 5, now=0)
    for second in range(1, 3400, 100):
        clock.received(BODY, 1_000_000, now=second)
    assert clock.next_read(BODY, 5, now=3300) == (300, "data_deadline")


def test_no_rate_no_deadline_is_the_timeout_alone() -> None:
    clock = ReadClock()
    assert clock.next_read(UPSTREAM, 0, now=0) == (300, "timeout")
    clock.received(UPSTREAM, 1, now=1000)
    assert clock.next_read(UPSTREAM, 0, now=1000) == (300, "timeout")
