"""``openssl s_client`` against a loopback SMTP port.

``s_client`` is run with ``-starttls smtp`` (or plain TLS for implicit-TLS
ports), fed ``QUIT`` on stdin with ``-crlf`` so it exits once the session is
up, and its output is parsed for the negotiated protocol and cipher:

    New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384
    Protocol  : TLSv1.3  /  Cipher    : ...
    Verify return code: 0 (ok)

A failed handshake prints ``Cipher is (NONE)`` (or nothing) and exits non-zero.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import require_binary

__all__ = ["HandshakeResult", "s_client"]

OPENSSL = "openssl"

_NEW = re.compile(r"^(?P<how>New|Reused), (?P<version>[\w.()]+), Cipher is (?P<cipher>\S+)", re.M)
_PROTO = re.compile(r"^\s*Protocol\s*: (?P<version>\S+)", re.M)
_VERIFY = re.compile(r"Verify return code: (?P<code>\d+) \((?P<text>[^)]*)\)")


@dataclass(frozen=True)
class HandshakeResult:
    ok: bool  # a TLS session with a cipher was established
    version: str | None  # "TLSv1.3"
    cipher: str | None  # OpenSSL name
    verify_code: int | None  # 0 = the chain verified against -CAfile
    returncode: int
    output: str  # stdout + stderr, for failure messages
    reused: bool = False  # the handshake resumed the session given with ``session_in``

    def __str__(self) -> str:
        head = f"s_client exit {self.returncode} ok={self.ok} {self.version} {self.cipher}"
        return f"{head}\n{self.output}"


def parse_s_client(returncode: int, stdout: str, stderr: str) -> HandshakeResult:
    text = stdout + "\n" + stderr
    m = _NEW.search(stdout)
    version = cipher = None
    if m and m["cipher"] != "(NONE)":
        version, cipher = m["version"], m["cipher"]
        p = _PROTO.search(stdout)
        if p:  # the SSL-Session block names the version also on TLS 1.3
            version = p["version"]
    v = _VERIFY.search(stdout)
    ok = cipher is not None and version is not None and version.startswith("TLS")
    return HandshakeResult(
        ok=ok,
        version=version,
        cipher=cipher,
        verify_code=int(v["code"]) if v else None,
        returncode=returncode,
        output=text,
        reused=ok and m is not None and m["how"] == "Reused",
    )


def s_client(
    port: int,
    *,
    starttls: bool = True,
    tls1_2: bool = False,
    tls1_3: bool = False,
    cipher: str | None = None,
    ciphersuites: str | None = None,
    servername: str | None = None,
    ca_file: Path | str | None = None,
    host: str = "127.0.0.1",
    wait_for_close: bool = False,
    session_out: Path | None = None,
    session_in: Path | None = None,
    timeout: float = 20,
) -> HandshakeResult:
    """One handshake; returns whether it succeeded and what was negotiated.

    ``session_out``: write the TLS session there; ``session_in``: offer the one
    written there (``reused`` says whether the server resumed it).

    ``wait_for_close`` (``-ign_eof``): after sending ``QUIT``, keep reading until
    the server closes, so its replies (banner, 221) are in ``output``.
    """
    openssl = require_binary(OPENSSL, "openssl")
    args = [openssl, "s_client", "-connect", f"{host}:{port}", "-crlf"]
    if starttls:
        args += ["-starttls", "smtp", "-name", "client.test"]
    if tls1_2:
        args.append("-tls1_2")
    if tls1_3:
        args.append("-tls1_3")
    if cipher:
        args += ["-cipher", cipher]
    if ciphersuites:
        args += ["-ciphersuites", ciphersuites]
    if servername:
        args += ["-servername", servername]
    else:
        args.append("-noservername")
    if ca_file:
        args += ["-CAfile", str(ca_file)]
    if wait_for_close:
        args.append("-ign_eof")
    if session_out is not None:
        args += ["-sess_out", str(session_out)]
    if session_in is not None:
        args += ["-sess_in", str(session_in)]
    try:
        proc = subprocess.run(
            args,
            input="QUIT\n",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        raise AssertionError(f"openssl s_client did not exit within {timeout}s:\n{out}") from exc
    return parse_s_client(proc.returncode, proc.stdout, proc.stderr)
