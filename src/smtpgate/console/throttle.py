"""Back-off after failed logins, per user name and per client address.

The first :attr:`LoginThrottle.free_failures` failures of a key cost
nothing; each later one locks the key for twice as long as the one before
(1 s, 2 s, 4 s, ... up to :attr:`LoginThrottle.ceiling`). While a user
name or an address is locked, every attempt with it is answered ``429``
with ``Retry-After`` without looking at the password (so guessing costs
the attacker time and the server nothing). A success clears the user
name's count, not the address's: one valid account must not reset the
back-off of an address that is guessing others. A key is forgotten after
:attr:`LoginThrottle.forget_after` seconds without failures, and the table
is bounded (the oldest keys go first). Plain data and a clock: no I/O.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

#: ("user", name) or ("address", client address).
ThrottleKey = tuple[str, str]


@dataclass(slots=True)
class _Failures:
    count: int
    last: float
    locked_until: float
    #: A refusal during the current lock was already reported (logged once per lock).
    reported: bool = False


class LoginThrottle:
    def __init__(
        self,
        *,
        free_failures: int = 3,
        first_lock: float = 1.0,
        ceiling: float = 300.0,
        forget_after: float = 3600.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.first_lock = first_lock
        self.ceiling = ceiling
        self.forget_after = forget_after
        self.max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[ThrottleKey, _Failures] = OrderedDict()

    def __len__(self) -> int:
        """How many user names and addresses are remembered."""
        return len(self._failures)

    def retry_after(self, keys: Iterable[ThrottleKey]) -> int:
        """Whole seconds until an attempt with ``keys`` is looked at; 0: now."""
        now = self._clock()
        wait = 0.0
        for key in keys:
            entry = self._failures.get(key)
            if entry is not None:
                wait = max(wait, entry.locked_until - now)
        return math.ceil(wait) if wait > 0 else 0

    def first_refusal(self, keys: Iterable[ThrottleKey]) -> bool:
        """Whether this is the first refused attempt of the current lock of ``keys``
        (so that a flood of attempts is logged once per lock, not once per attempt)."""
        first = False
        for key in keys:
            entry = self._failures.get(key)
            if entry is not None and entry.locked_until > self._clock() and not entry.reported:
                entry.reported = True
                first = True
        return first

    def failed(self, keys: Iterable[ThrottleKey]) -> None:
        now = self._clock()
        self._forget_old(now)
        for key in keys:
            entry = self._failures.pop(key, None) or _Failures(0, now, now)
            entry.count += 1
            entry.last = now
            entry.reported = False
            over = entry.count - self.free_failures
            if over >= 0:
                entry.locked_until = now + min(self.first_lock * 2 ** min(over, 32), self.ceiling)
            self._failures[key] = entry  # newest last
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, user: ThrottleKey) -> None:
        self._failures.pop(user, None)

    def _forget_old(self, now: float) -> None:
        while self._failures:
            key, entry = next(iter(self._failures.items()))
            if now - entry.last < self.forget_after or entry.locked_until > now:
                break
            del self._failures[key]
