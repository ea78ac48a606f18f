"""Run swaks (the Swiss Army Knife for SMTP) against a loopback port.

``run_swaks`` returns a :class:`SwaksResult` with swaks' exit code, its full
transcript, the parsed server replies (``<-``/``<~`` lines, ``~`` meaning inside
TLS) and the TLS version/cipher swaks reports (``=== TLS started with cipher
TLSv1.3:TLS_AES_256_GCM_SHA384:256``).

Exit codes worth knowing (swaks(1)): 0 ok, 2 cannot connect, 23 error in MAIL,
24 no RCPT accepted, 25 error to DATA, 26 not accepted after data, 29 error in
TLS (e.g. STARTTLS not offered).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from smtpgate.smtp import Reply

from . import PeerMissing, require_binary

__all__ = ["SwaksResult", "require_swaks_tls", "run_swaks"]

SWAKS = "swaks"

_REPLY = re.compile(r"^(?P<dir><[-~*])\*?\s+(?P<code>\d{3})(?P<sep>[ -])(?P<text>.*)$")
_TLS = re.compile(
    r"^=== TLS started with cipher (?P<version>[^:]+):(?P<cipher>[^:]+):(?P<bits>\d+)"
)
_CMD = re.compile(r"^\s?(?P<dir>[-~*])> (?P<cmd>.*)$")


def require_swaks_tls(swaks: str) -> None:
    """Fail (never skip) when this swaks cannot do TLS.

    swaks is installed without its TLS module unless Net::SSLeay is there too
    (Debian: ``libnet-ssleay-perl`` is only a Recommends); it then exits with
    ``*** TLS not available: requires Net::SSLeay`` at the first ``--tls``.
    ``swaks --support`` lists each optional feature as ``=== TLS supported`` or
    ``*** TLS not available: ...`` and exits 0 either way.
    """
    proc = subprocess.run(
        [swaks, "--support"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    if "=== TLS supported" in lines:
        return
    why = next((line for line in lines if "TLS" in line), "`swaks --support` does not list TLS")
    raise PeerMissing(
        f"swaks ({swaks}) cannot do TLS: {why.strip()} (Debian package 'libnet-ssleay-perl'); "
        "run `make peers` (scripts/install-peers.sh) as root"
    )


@dataclass
class SwaksResult:
    returncode: int
    transcript: str
    stderr: str
    #: Each reply with all its lines; ``command`` is the command line it answers
    #: (``""`` for the banner, ``"EHLO vm"``, ``"."`` for the end of data).
    replies: list[Reply] = field(default_factory=list)
    #: Per reply: it came inside TLS (``<~``).
    encrypted: list[bool] = field(default_factory=list)
    tls_version: str | None = None
    tls_cipher: str | None = None

    @property
    def last_code(self) -> int | None:
        """The code of the last reply before QUIT's (or of the last reply at all)."""
        codes = [r for r in self.replies if not r.command.upper().startswith("QUIT")]
        return codes[-1].code if codes else None

    def reply_to(self, verb: str) -> Reply | None:
        """The (last) reply to the command starting with ``verb`` ("MAIL", "RCPT", "DATA", ".")."""
        found = None
        for r in self.replies:
            if r.command.upper().startswith(verb.upper()):
                found = r
        return found

    def inside_tls(self, reply: Reply) -> bool:
        """``reply`` (one of :attr:`replies`) came inside TLS."""
        return any(r is reply and tls for r, tls in zip(self.replies, self.encrypted, strict=True))

    @property
    def end_of_data(self) -> Reply | None:
        """The reply to the final ``.`` of the message."""
        return self.reply_to(".")

    def __str__(self) -> str:
        return f"swaks exit {self.returncode}\n{self.transcript}\n{self.stderr}"


def parse_transcript(text: str) -> tuple[list[Reply], list[bool], str | None, str | None]:
    """(replies, came inside TLS per reply, TLS version, TLS cipher) of a swaks transcript."""
    replies: list[Reply] = []
    encrypted: list[bool] = []
    lines: list[bytes] = []
    last_cmd = ""
    in_data = False
    tls_version = tls_cipher = None
    for line in text.splitlines():
        m = _TLS.match(line)
        if m:
            tls_version, tls_cipher = m["version"], m["cipher"]
            continue
        m = _REPLY.match(line)
        if m:
            lines.append(m["text"].encode())
            if m["sep"] == " ":
                replies.append(Reply(int(m["code"]), tuple(lines), last_cmd))
                encrypted.append(m["dir"].endswith("~"))
                lines = []
            continue
        m = _CMD.match(line)
        if m:
            cmd = m["cmd"]
            if in_data:
                if cmd == ".":
                    in_data = False
                    last_cmd = "."
                continue
            last_cmd = cmd
            if cmd.upper() == "DATA":
                in_data = True
                # The 354 answers DATA; the message lines follow it.
    return replies, encrypted, tls_version, tls_cipher


def run_swaks(
    port: int,
    *,
    sender: str = "alice@sender.test",
    to: str | list[str] = "bob@receiver.test",
    tls: str = "plain",
    helo: str = "client.test",
    server: str = "127.0.0.1",
    extra: list[str] | None = None,
    timeout: float = 30,
    wrapper: Sequence[str] = (),
) -> SwaksResult:
    """Run one swaks transaction.

    ``tls``: ``"plain"`` (no TLS), ``"starttls"`` (``--tls``: STARTTLS required),
    ``"optional"`` (``--tls-optional``), ``"implicit"`` (``--tlsc``, TLS on connect).
    ``wrapper``: a command prefix that runs swaks (``ip netns exec NS``).
    """
    swaks = require_binary(SWAKS, "swaks")
    if tls != "plain":
        require_swaks_tls(swaks)
    rcpts = [to] if isinstance(to, str) else to
    args = [
        *wrapper,
        swaks,
        "--server",
        server,
        "--port",
        str(port),
        "--from",
        sender,
        "--to",
        ",".join(rcpts),
        "--helo",
        helo,
        "--timeout",
        "20",
        "--header",
        "Subject: smtpgate interop (swaks)",
    ]
    mode = {
        "plain": [],
        "starttls": ["--tls"],
        "optional": ["--tls-optional"],
        "implicit": ["--tlsc"],
    }[tls]
    args += mode
    args += extra or []
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return SwaksResult(proc.returncode, proc.stdout, proc.stderr, *parse_transcript(proc.stdout))


def run_swaks_auth(port: int, mechanism: str, user: str, password: str, **kw: Any) -> SwaksResult:
    """:func:`run_swaks` over STARTTLS, authenticating as ``user`` (also the sender)
    with ``mechanism`` before MAIL."""
    return run_swaks(
        port,
        tls="starttls",
        sender=user,
        extra=["--auth", mechanism, "--auth-user", user, "--auth-password", password],
        **kw,
    )
