"""How long the driver's next read may wait, sans-IO (the driver passes the loop's time).

A timeout per read restarts with every byte, so a client that sends one byte
per period would keep a session open forever. :class:`ReadClock` adds, per
*phase* (one command line; the DATA phase; each wait for the upstream), the
phase's overall deadline (:attr:`Wait.deadline`), and where the wait asks for a
minimum data rate (DATA), a budget that grows with the bytes received: each
read of N bytes adds N / rate seconds, and the budget never reaches further
than the per-read timeout ahead (Postfix's ``smtpd_min_data_rate``). A client
that keeps up the rate never meets it; one that trickles runs out of it after
about one timeout.

A new phase starts when the session waits for something else (another
:class:`Wait`) or the SMTP core took another command.
"""

from __future__ import annotations

import math

from smtpgate.proxy.session import Wait

#: The session_end reason when the budget of a minimum data rate ran out.
DATA_RATE = "data_rate"


class ReadClock:
    __slots__ = ("_budget", "_commands", "_deadline", "_wait")

    def __init__(self) -> None:
        self._wait: Wait | None = None
        self._commands = -1
        self._deadline = math.inf
        self._budget = math.inf

    def next_read(self, wait: Wait, commands: int, now: float) -> tuple[float, str]:
        """The timeout of the next read for ``wait``, and the reason if it expires.
        ``commands``: how many commands the core took so far."""
        if wait is not self._wait or commands != self._commands:
            self._wait, self._commands = wait, commands
            self._deadline = now + wait.deadline if wait.deadline is not None else math.inf
            self._budget = now + wait.timeout if wait.min_rate else math.inf
        timeout, reason = wait.timeout, "timeout"
        if self._deadline - now < timeout:
            timeout, reason = self._deadline - now, wait.deadline_reason
        if self._budget - now < timeout:
            timeout, reason = self._budget - now, DATA_RATE
        return max(timeout, 0.0), reason

    def received(self, wait: Wait, size: int, now: float) -> None:
        """``size`` bytes arrived for ``wait``: the data-rate budget grows."""
        if wait.min_rate:
            self._budget = min(self._budget + size / wait.min_rate, now + wait.timeout)
