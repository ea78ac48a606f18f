"""Outside scanners against smtpgate's client leg (issue 11 item 6, docs/tls-scan.md).

sslyze and testssl.sh scan the STARTTLS port of ``smtpgate serve`` under each
predefined TLS profile and under a strict clone (TLS-Server.Standard with ``pfs =
"required"``), and Postfix's smtpd with its default TLS settings for comparison.
Every target presents the same certificate chain: a leaf issued by an intermediate
of a test root; the scanners are given the root only, so a complete chain is one the
server sends with its intermediate.

Asserted for every smtpgate profile, by both scanners: no SSL, TLS 1.0 or 1.1; no
weak cipher suite (NULL, anonymous, export, RC4/DES/3DES/IDEA, under 128 bits); secure
renegotiation only, no client-initiated one; no compression; the chain complete and
verified. The strict clone offers forward-secret suites only. Postfix is scanned, not
judged: its results go beside smtpgate's in docs/tls-scan.md (``SMTPGATE_SCAN_REPORT``
names a file to write that table to).

The four testssl.sh runs go in parallel (each waits on its handshakes far more than it
computes), so the module takes about as long as the slowest one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.peers.certs import LeafFiles
from tests.peers.gate_config import gate_config
from tests.peers.postfix import PostfixInstance
from tests.peers.scanners import (
    ScanSummary,
    read_testssl,
    run_sslyze,
    start_testssl,
    summarize,
)
from tests.peers.smtpgate_proc import SmtpgateProcess

#: The scans happen in the module's fixture, inside the first test's time: testssl.sh
#: alone takes one to four minutes on a busy 2-core machine.
pytestmark = [pytest.mark.scanner, pytest.mark.timeout(900)]

STRICT = "TLS-Server.Standard.1"
#: The smtpgate targets: the profile the client leg uses, and the profile's own fields
#: (for the clone only).
SMTPGATE_TARGETS = {
    "TLS-Client.Standard": None,
    "TLS-Server.Standard": None,
    STRICT: {"min_version": "1.2", "tls_compliant_only": True, "pfs": "required"},
}
POSTFIX = "Postfix smtpd (defaults)"
HOSTNAME = "mx.example.test"


def _certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Name, rsa.RSAPrivateKey] | None,
    *,
    ca: bool,
    path_length: int | None = None,
) -> x509.Certificate:
    """An RFC 5280 certificate (trustme's leaves mark a SAN critical beside a subject,
    which sslyze's strict verifier refuses: the test would judge trustme, not smtpgate)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        usage = dict.fromkeys(
            ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment"),
            False,
        )
        builder = builder.add_extension(
            x509.KeyUsage(
                **usage,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(HOSTNAME),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def chain_files(directory: Path) -> tuple[LeafFiles, Path]:
    """RSA (as most MTAs' certificates, and smtpgate's generated one): a leaf for the
    loopback names under an intermediate; the chain file (leaf, then intermediate) with
    its key, and the root alone."""
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]
    root = _certificate("smtpgate scan root", keys[0], None, ca=True, path_length=1)
    middle = _certificate(
        "smtpgate scan intermediate", keys[1], (root.subject, keys[0]), ca=True, path_length=0
    )
    leaf = _certificate(HOSTNAME, keys[2], (middle.subject, keys[1]), ca=False)
    pem = serialization.Encoding.PEM
    cert, key, anchor = directory / "chain.pem", directory / "key.pem", directory / "root.pem"
    cert.write_bytes(leaf.public_bytes(pem) + middle.public_bytes(pem))
    key.write_bytes(
        keys[2].private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    anchor.write_bytes(root.public_bytes(pem))
    return LeafFiles(cert, key, (HOSTNAME,)), anchor


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ScanSummary]]:
    directory = tmp_path_factory.mktemp("scan")
    leaf, anchor = chain_files(directory)
    with ExitStack() as stack:
        ports: dict[str, int] = {}
        for profile, fields in SMTPGATE_TARGETS.items():
            config = gate_config(
                9,  # never contacted: the scanners stop at the client leg
                server_cert=leaf,
                starttls={"tls_profile": profile},
                profile={"name": STRICT, **fields} if fields else None,
            )
            if fields is None:
                config["tls_profiles"] = []  # a predefined profile, nothing of our own
            gate = stack.enter_context(SmtpgateProcess(directory / profile, config))
            ports[profile] = gate.port()
        postfix = stack.enter_context(
            PostfixInstance("scan", directory / "postfix", smtpd_cert=leaf, hostname=HOSTNAME)
        )
        ports[POSTFIX] = postfix.port
        running = {
            target: start_testssl(port, anchor, directory / f"{name(target)}.testssl.json")
            for target, port in ports.items()
        }
        stack.callback(lambda: [p.kill() for p in running.values() if p.poll() is None])
        sslyze = {
            target: run_sslyze(port, anchor, directory / f"{name(target)}.sslyze.json")
            for target, port in ports.items()
        }
        for process in running.values():
            process.wait(300)
        results = {
            target: summarize(
                target,
                sslyze[target],
                read_testssl(directory / f"{name(target)}.testssl.json"),
                anchor,
            )
            for target in ports
        }
    report = os.environ.get("SMTPGATE_SCAN_REPORT")
    if report:
        Path(report).write_text(side_by_side(results))
    yield results


def name(target: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in target)


@pytest.fixture(params=list(SMTPGATE_TARGETS))
def scan(request: pytest.FixtureRequest, scans: dict[str, ScanSummary]) -> ScanSummary:
    return scans[request.param]


def test_no_protocol_below_tls_1_2(scan: ScanSummary) -> None:
    assert scan.protocols == ["TLSv1.2", "TLSv1.3"]
    found = scan.testssl
    assert [found[p] for p in ("SSLv2", "SSLv3", "TLS1", "TLS1_1")] == ["not offered"] * 4
    assert found["TLS1_2"] == "offered"
    assert found["TLS1_3"].startswith("offered")


def test_no_weak_cipher(scan: ScanSummary) -> None:
    assert scan.weak == []
    weak_lists = ["cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW"]
    weak_lists.append("cipherlist_3DES_IDEA")
    assert {scan.testssl[c] for c in weak_lists} == {"not offered"}


def test_strict_clone_offers_forward_secret_suites_only(scans: dict[str, ScanSummary]) -> None:
    strict = scans[STRICT]
    assert strict.static_rsa == []
    assert all(s.startswith("TLS_ECDHE_") for s in strict.suites["TLSv1.2"])
    # The predefined profiles (pfs = "allowed") also take static RSA key exchange, for
    # senders that know nothing else (docs/tls-scan.md).
    assert scans["TLS-Server.Standard"].static_rsa


def test_no_insecure_renegotiation(scan: ScanSummary) -> None:
    assert (scan.secure_renegotiation, scan.client_renegotiation_dos) == (True, False)
    assert scan.testssl["secure_renego"] == "supported"
    assert scan.testssl["secure_client_renego"] == "not vulnerable"


def test_no_compression(scan: ScanSummary) -> None:
    assert scan.compression is False
    assert scan.testssl["CRIME_TLS"].startswith("not vulnerable")


def test_certificate_chain_is_complete(scan: ScanSummary) -> None:
    """The leaf and its intermediate are sent, in order, and verify up to the root."""
    assert scan.received_chain == [f"CN={HOSTNAME}", "CN=smtpgate scan intermediate"]
    assert scan.chain_verified
    assert scan.testssl["cert_chain_of_trust"] == "passed."
    assert scan.testssl["certs_list_ordering_problem"] == "no"


def test_postfix_was_scanned_the_same_way(scans: dict[str, ScanSummary]) -> None:
    """The comparison is only fair if Postfix answered both scanners."""
    postfix = scans[POSTFIX]
    assert "TLSv1.2" in postfix.protocols
    assert "cipherlist_NULL" in postfix.testssl


# --- the side-by-side table of docs/tls-scan.md ----------------------------------------------


def side_by_side(results: dict[str, ScanSummary]) -> str:
    """A Markdown table: one column per target, one row per finding."""

    def cell(values: list[str], limit: int = 6) -> str:
        shown = ", ".join(values[:limit])
        return f"{shown}, +{len(values) - limit}" if len(values) > limit else shown or "none"

    rows: list[tuple[str, list[str]]] = [
        ("protocols (sslyze)", [", ".join(s.protocols) for s in results.values()]),
        (
            "suites accepted, TLS 1.2 / 1.3 (sslyze)",
            [
                f"{len(s.suites.get('TLSv1.2', []))} / {len(s.suites.get('TLSv1.3', []))}"
                for s in results.values()
            ],
        ),
        ("weak suites (sslyze)", [cell(s.weak) for s in results.values()]),
        ("static RSA key exchange (sslyze)", [str(len(s.static_rsa)) for s in results.values()]),
        ("CBC suites (sslyze)", [str(len(s.cbc)) for s in results.values()]),
        ("compression (sslyze)", [str(s.compression).lower() for s in results.values()]),
        (
            "secure renegotiation / client renegotiation DoS (sslyze)",
            [
                f"{s.secure_renegotiation} / {s.client_renegotiation_dos}".lower()
                for s in results.values()
            ],
        ),
        (
            "chain sent, verified (sslyze)",
            [
                f"{len(s.received_chain)} sent, " + ("verified" if s.chain_verified else "NOT ok")
                for s in results.values()
            ],
        ),
    ]
    testssl_ids = [
        "TLS1",
        "TLS1_1",
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
        "cipherlist_AVERAGE",
        "secure_renego",
        "secure_client_renego",
        "CRIME_TLS",
        "cert_chain_of_trust",
        "cert_revocation",
        "OCSP_stapling",
        "TLS_session_ticket",
    ]
    for test_id in testssl_ids:
        rows.append(
            (f"`{test_id}` (testssl.sh)", [s.testssl.get(test_id, "-") for s in results.values()])
        )
    header = "| | " + " | ".join(results) + " |\n"
    header += "|---" * (len(results) + 1) + "|\n"
    return header + "".join(
        f"| {label} | " + " | ".join(v.replace("|", "/") for v in values) + " |\n"
        for label, values in rows
    )
