"""Browser sessions of the web console: a cookie after a password login, and
the CSRF token every change from a page must carry.

The cookie holds 32 random bytes; the console keeps only their SHA-256
digest, in memory (a restart logs everyone out). A session ends after
:data:`IDLE_SECONDS` without a request, :data:`LIFETIME_SECONDS` after the
login, at logout, and as soon as its user is removed or their password
changes (the session remembers the password hash it was opened with).

The cookie is ``Secure; HttpOnly; SameSite=Strict`` with the ``__Host-``
prefix (no ``Domain``, ``Path=/``): scripts cannot read it and no other
site's page sends it. The CSRF token is a second random value the pages get
from the login answer (and ``GET /api/v1/session``) and send back in the
``X-CSRF-Token`` header on every change; the console compares it on each
cookie-authenticated request that is not GET or HEAD. Basic and token
clients send no cookie and are not concerned.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: The cookie's name; ``__Host-`` makes the browser insist on Secure, Path=/ and no Domain.
SESSION_COOKIE = "__Host-smtpgate-session"
CSRF_HEADER = "X-CSRF-Token"
#: A session unused this long ends (seconds).
IDLE_SECONDS = 30 * 60
#: A session ends this long after its login, used or not (seconds).
LIFETIME_SECONDS = 12 * 3600
#: Sessions kept at most; beyond, the least recently used ends.
MAX_SESSIONS = 1000
#: Methods that change nothing, so need no CSRF token.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(slots=True)
class Session:
    user: str
    #: The user's password hash at login: a new password ends the session.
    secret_hash: str
    csrf_token: str
    created: float
    last_used: float


def _digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8")).hexdigest()


class SessionStore:
    """The open sessions of one console (in memory, never written)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def open(self, user: str, secret_hash: str) -> tuple[str, Session]:
        """A new session: the cookie value (given to the browser only) and the session."""
        cookie = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(user, secret_hash, secrets.token_urlsafe(32), now, now)
        self._sessions[_digest(cookie)] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return cookie, session

    def find(self, cookie: str) -> Session | None:
        """The live session of a cookie (its use counts), or None."""
        key = _digest(cookie)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_used > IDLE_SECONDS or now - session.created > LIFETIME_SECONDS:
            del self._sessions[key]
            return None
        session.last_used = now
        self._sessions.move_to_end(key)
        return session

    def close(self, cookie: str) -> None:
        self._sessions.pop(_digest(cookie), None)


def csrf_matches(session: Session, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(session.csrf_token, sent)
