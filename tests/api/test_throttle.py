"""The login back-off as plain data and a clock (docs/api.md, "Back-off")."""

from __future__ import annotations

from smtpgate.console.throttle import LoginThrottle

USER = ("user", "alice")
ADDRESS = ("address", "192.0.2.1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_three_free_failures_then_doubling_up_to_the_ceiling() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock, ceiling=10)
    waits = []
    for _ in range(8):
        throttle.failed([USER])
        waits.append(throttle.retry_after([USER]))
        clock.now += waits[-1]
    assert waits == [0, 0, 1, 2, 4, 8, 10, 10]


def test_any_locked_key_locks_the_attempt_and_success_clears_the_name_only() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(3):
        throttle.failed([USER, ADDRESS])
    assert throttle.retry_after([("user", "bob"), ADDRESS]) == 1
    assert throttle.retry_after([USER, ("address", "192.0.2.2")]) == 1
    clock.now += 1
    throttle.succeeded(USER)
    assert throttle.retry_after([USER]) == 0
    throttle.failed([ADDRESS])  # the address keeps its count: the fourth failure
    assert throttle.retry_after([ADDRESS]) == 2


def test_keys_are_forgotten_and_bounded() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock, forget_after=60, max_keys=2)
    for _ in range(3):
        throttle.failed([USER])
    clock.now += 61
    throttle.failed([ADDRESS])  # alice's failures are an hour old: forgotten
    throttle.failed([USER])
    assert throttle.retry_after([USER]) == 0
    throttle.failed([("user", "a")])
    throttle.failed([("user", "b")])
    assert len(throttle) == 2


def test_a_lock_is_reported_once() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(3):
        throttle.failed([USER])
    assert [throttle.first_refusal([USER]) for _ in range(3)] == [True, False, False]
    clock.now += 1
    throttle.failed([USER])  # a new failure, a new lock
    assert throttle.first_refusal([USER]) is True
