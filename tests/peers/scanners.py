"""Outside TLS scanners run against a STARTTLS port: sslyze and testssl.sh.

Nobody here wrote them, which is the point (issue 11 item 6). Both are started as
processes, with their JSON output parsed into one :class:`ScanSummary` per target,
so smtpgate and Postfix are judged by the same reading.

- sslyze (PyPI) lives in a virtualenv of its own, ``.venv/scanners`` (``make peers``):
  sslyze 6 pins ``cryptography<47`` and smtpgate pins ``cryptography==50.0.2``, so the
  two cannot share one environment. Its pins are in
  ``tests/scanners/sslyze-requirements.txt``.
- testssl.sh (Debian package ``testssl.sh``, ``/usr/bin/testssl``; installed and checked
  by ``scripts/install-peers.sh``) runs the checks of :data:`TESTSSL_CHECKS` only, not its
  full default run (a minute or more per target): protocols (``-p``), cipher categories
  (``-s``), renegotiation (``-R``), compression (``-C``) and the server defaults with the
  certificate chain (``-S``); ``--nodns none``: loopback only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import PeerMissing, require_binary, tail

__all__ = [
    "TESTSSL_CHECKS",
    "ScanSummary",
    "read_testssl",
    "run_sslyze",
    "sslyze_python",
    "start_testssl",
    "summarize",
]

#: testssl.sh options: what the tests assert on, and nothing slower (its forward-secrecy
#: check ``-f`` enumerates every curve and group, as long as the rest together; sslyze
#: lists the key exchange of every accepted suite anyway).
TESTSSL_CHECKS = ("-p", "-s", "-R", "-C", "-S")
#: sslyze's scan commands (each a few handshakes; the whole scan takes seconds).
SSLYZE_CHECKS = (
    "--certinfo",
    "--sslv2",
    "--sslv3",
    "--tlsv1",
    "--tlsv1_1",
    "--tlsv1_2",
    "--tlsv1_3",
    "--compression",
    "--reneg",
    "--elliptic_curves",
    "--fallback",
    "--heartbleed",
    "--robot",
    "--openssl_ccs",
    "--ems",
)

#: sslyze's names of the protocol scans, with the protocol each one tries.
SSLYZE_PROTOCOLS = {
    "ssl_2_0_cipher_suites": "SSLv2",
    "ssl_3_0_cipher_suites": "SSLv3",
    "tls_1_0_cipher_suites": "TLSv1.0",
    "tls_1_1_cipher_suites": "TLSv1.1",
    "tls_1_2_cipher_suites": "TLSv1.2",
    "tls_1_3_cipher_suites": "TLSv1.3",
}
#: Parts of a cipher suite name that make it weak (broken, unauthenticated, export
#: grade, 64-bit blocks): never acceptable.
WEAK = ("NULL", "anon", "EXPORT", "RC4", "RC2", "_DES_", "3DES", "IDEA", "MD5")


def sslyze_python() -> Path:
    """The Python of the scanners' virtualenv, or fail with how to get it."""
    python = Path(sys.executable).parent.parent / "scanners" / "bin" / "python"
    if not python.is_file():
        raise PeerMissing(f"sslyze is not installed ({python} is missing): run `make peers`")
    return python


def run_sslyze(port: int, ca_file: Path, out: Path) -> dict[str, Any]:
    """One sslyze scan of ``127.0.0.1:port`` with STARTTLS (every default check);
    ``ca_file``: the anchor its certificate check adds to the public stores."""
    proc = subprocess.run(
        [
            str(sslyze_python()),
            "-m",
            "sslyze",
            "--quiet",
            "--starttls",
            "smtp",
            # The checks, named: Mozilla's HTTPS guideline is not the measure of an MTA.
            "--mozilla_config",
            "disable",
            *SSLYZE_CHECKS,
            "--certinfo_ca_file",
            str(ca_file),
            "--json_out",
            str(out),
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0 or not out.exists():
        raise AssertionError(f"sslyze exited {proc.returncode}:\n{tail(proc.stdout + proc.stderr)}")
    (result,) = json.loads(out.read_text())["server_scan_results"]
    if result["scan_status"] != "COMPLETED":
        raise AssertionError(f"sslyze could not scan port {port}: {result}")
    scans: dict[str, Any] = result["scan_result"]
    return scans


def start_testssl(port: int, ca_file: Path, out: Path) -> subprocess.Popen[bytes]:
    """Start testssl.sh on ``127.0.0.1:port`` (STARTTLS); its flat JSON goes to ``out``."""
    testssl = require_binary("testssl", "testssl.sh")
    log = out.with_suffix(".txt").open("wb")
    return subprocess.Popen(
        [
            testssl,
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--nodns",
            "none",
            "--connect-timeout",
            "5",
            "--openssl-timeout",
            "5",
            "--add-ca",
            str(ca_file),
            "--jsonfile",
            str(out),
            "-t",
            "smtp",
            *TESTSSL_CHECKS,
            f"127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def read_testssl(out: Path) -> dict[str, str]:
    """testssl.sh's flat JSON as ``{id: finding}``."""
    if not out.exists():
        text = out.with_suffix(".txt")
        raise AssertionError(f"testssl.sh wrote no {out}:\n{tail(text.read_text())}")
    return {entry["id"]: entry["finding"] for entry in json.loads(out.read_text())}


@dataclass
class ScanSummary:
    """What the two scanners found on one target, in the terms the tests assert."""

    target: str
    #: Protocols sslyze could negotiate: "TLSv1.2", "TLSv1.3", ...
    protocols: list[str] = field(default_factory=list)
    #: Every accepted suite per protocol (IANA names), from sslyze.
    suites: dict[str, list[str]] = field(default_factory=dict)
    #: Suites without an ephemeral key exchange (static RSA), TLS 1.2 and below.
    static_rsa: list[str] = field(default_factory=list)
    cbc: list[str] = field(default_factory=list)
    weak: list[str] = field(default_factory=list)
    compression: bool = True
    secure_renegotiation: bool = False
    client_renegotiation_dos: bool = True
    #: The certificates the server sent (subjects), and whether the chain verified
    #: against the test's anchor alone.
    received_chain: list[str] = field(default_factory=list)
    chain_verified: bool = False
    #: testssl.sh: ``{id: finding}`` of every check.
    testssl: dict[str, str] = field(default_factory=dict)


def summarize(
    target: str, scans: dict[str, Any], testssl: dict[str, str], ca_file: Path
) -> ScanSummary:
    """``ca_file``: the anchor the scans were given; the chain must verify up to it."""
    summary = ScanSummary(target, testssl=testssl)
    for scan, protocol in SSLYZE_PROTOCOLS.items():
        accepted = [s["cipher_suite"] for s in scans[scan]["result"]["accepted_cipher_suites"]]
        if not accepted:
            continue
        summary.protocols.append(protocol)
        names = [suite["name"] for suite in accepted]
        summary.suites[protocol] = names
        summary.weak += [
            n
            for n, s in zip(names, accepted, strict=True)
            if s["is_anonymous"] or s["key_size"] < 128 or any(w in n for w in WEAK)
        ]
        if protocol != "TLSv1.3":
            summary.static_rsa += [n for n in names if n.startswith("TLS_RSA_")]
            summary.cbc += [n for n in names if "_CBC_" in n]
    summary.compression = scans["tls_compression"]["result"]["supports_compression"]
    renegotiation = scans["session_renegotiation"]["result"]
    summary.secure_renegotiation = renegotiation["supports_secure_renegotiation"]
    summary.client_renegotiation_dos = renegotiation["is_vulnerable_to_client_renegotiation_dos"]
    (deployment, *_) = scans["certificate_info"]["result"]["certificate_deployments"]
    summary.received_chain = [
        cert["subject"]["rfc4514_string"] for cert in deployment["received_certificate_chain"]
    ]
    summary.chain_verified = any(
        result["was_validation_successful"]
        for result in deployment["path_validation_results"]
        if result["trust_store"]["path"] == str(ca_file)
    )
    return summary
