"""A reload applies listener changes (issue 8 item 4) in a real ``smtpgate serve``:
policies added listen, policies removed stop accepting while their sessions in
progress finish, a changed address is opened before the old one closes, an
address that cannot be had refuses the whole reload and changes nothing, and an
address that stays keeps its socket (no client is refused during a reload)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpgate.config import toml_writer
from tests.peers import ReservedPort, wait_until
from tests.peers.certs import LeafFiles, TestPKI
from tests.peers.gate_config import POLICY, gate_config
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.peers.upstream import AiosmtpdUpstream

QUEUED = (250, b"2.0.0 OK queued")


def address(port: ReservedPort) -> str:
    return f"{port.host}:{port.port}"


@pytest.fixture
def held() -> Iterator[list[ReservedPort]]:
    """Three loopback ports held for this test (no free-port race): smtpgate binds
    them at start or at a reload; released at the test's end."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(ReservedPort()) for _ in range(3)]


def policy(name: str, listen: str, upstream: AiosmtpdUpstream, **keys: Any) -> dict[str, Any]:
    return {"name": name, "listen": listen, "upstream": f"127.0.0.1:{upstream.port}", **keys}


def sighup(gate: SmtpgateProcess, policies: list[dict[str, Any]]) -> None:
    """Write the configuration with ``policies`` and signal serve, as an administrator does."""
    gate.config = {**gate.config, "policies": policies}
    gate.text = toml_writer.dumps(gate.config)
    gate.config_file.write_text(gate.text)
    assert gate.proc is not None
    gate.proc.send_signal(signal.SIGHUP)


def reloads(gate: SmtpgateProcess, count: int) -> list[dict[str, Any]]:
    """The outcomes of reloads (applied or refused), once there are ``count``."""

    def outcomes() -> list[dict[str, Any]] | None:
        found = [r for r in gate.records() if r["event"] in ("reloaded", "reload_failed")]
        return found if len(found) >= count else None

    return wait_until(
        outcomes, lambda: f"fewer than {count} reloads\n{gate.diagnostics()}", timeout=20
    )


def send(port: int, subject: str) -> None:
    content = f"Message-ID: <{subject}@sender.example>\r\nSubject: {subject}\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert client.sendmail("a@sender.example", ["b@rcpt.example"], content) == {}


def refuses(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def begin(port: int) -> smtplib.SMTP:
    """A session in progress: greeted, EHLO and MAIL FROM done."""
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    assert client.ehlo()[0] == 250
    assert client.mail("a@sender.example")[0] == 250
    return client


def finish(client: smtplib.SMTP, subject: str) -> None:
    assert client.rcpt("b@rcpt.example")[0] == 250
    message = f"Message-ID: <{subject}@sender.example>\r\n\r\nhi\r\n".encode()
    assert client.data(message) == QUEUED
    client.quit()


def transaction_policies(gate: SmtpgateProcess) -> dict[str, Any]:
    """The policy of each transaction logged so far, by Message-ID: the records of
    sessions two workers served reach the log in either order."""
    return {r["message_id"]: r["policy"] for r in gate.records("transaction")}


@pytest.fixture
def gate(
    tmp_path: Path, upstream: AiosmtpdUpstream, held: list[ReservedPort]
) -> Iterator[SmtpgateProcess]:
    config = {"policies": [policy("p", address(held[0]), upstream)]}
    with SmtpgateProcess(tmp_path, config) as proc:
        yield proc


def test_a_policy_added_by_sighup_listens_and_relays(
    gate: SmtpgateProcess, upstream: AiosmtpdUpstream, held: list[ReservedPort]
) -> None:
    p = gate.policy("p")
    sighup(gate, [p, policy("q", address(held[1]), upstream)])
    (reloaded,) = reloads(gate, 1)
    assert reloaded["event"] == "reloaded", reloaded
    assert (reloaded["policies"], reloaded["opened"], reloaded["closed"]) == (
        ["p", "q"],
        [f"q {address(held[1])}"],
        [],
    )
    (listening,) = gate.records("listening")[1:]
    assert (listening["policy"], listening["listen"]) == ("q", address(held[1]))
    send(held[1].port, "via-q")
    send(held[0].port, "via-p")
    gate.transactions(count=2)
    assert transaction_policies(gate) == {
        "<via-q@sender.example>": "q",
        "<via-p@sender.example>": "p",
    }
    assert len(upstream.messages) == 2


def test_a_removed_policy_stops_accepting_and_its_session_in_progress_finishes(
    tmp_path: Path, upstream: AiosmtpdUpstream, held: list[ReservedPort]
) -> None:
    p, q = policy("p", address(held[0]), upstream), policy("q", address(held[1]), upstream)
    with SmtpgateProcess(tmp_path, {"policies": [p, q]}) as gate:
        in_progress = begin(held[1].port)
        sighup(gate, [p])
        (reloaded,) = reloads(gate, 1)
        assert (reloaded["event"], reloaded["opened"], reloaded["closed"]) == (
            "reloaded",
            [],
            [f"q {address(held[1])}"],
        )
        assert refuses(held[1].port)
        finish(in_progress, "begun-on-q")
        send(held[0].port, "on-p")
        gate.transactions(count=2)
        assert transaction_policies(gate) == {
            "<begun-on-q@sender.example>": "q",
            "<on-p@sender.example>": "p",
        }
    assert len(upstream.messages) == 2


def test_a_changed_port_is_opened_before_the_old_one_closes(
    gate: SmtpgateProcess, upstream: AiosmtpdUpstream, held: list[ReservedPort]
) -> None:
    in_progress = begin(held[0].port)
    sighup(gate, [policy("p", address(held[1]), upstream)])
    (reloaded,) = reloads(gate, 1)
    assert (reloaded["event"], reloaded["opened"], reloaded["closed"]) == (
        "reloaded",
        [f"p {address(held[1])}"],
        [f"p {address(held[0])}"],
    )
    assert refuses(held[0].port)
    send(held[1].port, "new-port")
    finish(in_progress, "old-port")
    gate.transactions(count=2)
    assert len(upstream.messages) == 2


def test_an_address_in_use_refuses_the_whole_reload_and_the_old_listeners_serve(
    gate: SmtpgateProcess, upstream: AiosmtpdUpstream, held: list[ReservedPort]
) -> None:
    taken = socket.create_server(("127.0.0.1", 0))  # something else listens there
    try:
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        sighup(
            gate,
            [
                policy("p", address(held[2]), upstream),  # would move p
                policy("q", address(held[1]), upstream),  # would open q: opened, then closed again
                policy("r", busy, upstream),
            ],
        )
        (failed,) = reloads(gate, 1)
        assert failed == {
            **failed,
            "event": "reload_failed",
            "reason": f"policies[3].listen: {busy}: address already in use",
        }
        assert refuses(held[1].port) and refuses(held[2].port)
        send(held[0].port, "still-p")
        (done,) = gate.transactions()
        assert done["policy"] == "p"
    finally:
        taken.close()
    # The file is fixed: the next reload applies it.
    sighup(gate, [policy("p", address(held[0]), upstream), policy("q", address(held[1]), upstream)])
    assert reloads(gate, 2)[1]["opened"] == [f"q {address(held[1])}"]
    send(held[1].port, "q-now")


class Knocker:
    """Connects to ``port`` again and again in a thread, sends ``first`` and expects
    a reply that starts with ``2`` (the greeting); whatever else happens is kept
    in ``failures``."""

    def __init__(self, port: int, first: bytes = b"") -> None:
        self.port, self.first = port, first
        self.failures: list[BaseException] = []
        self.greeted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._knock)

    def _knock(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as c:
                    c.sendall(self.first)
                    if c.recv(1) != b"2":
                        self.failures.append(ConnectionError("closed before the greeting"))
                    self.greeted += 1
            except OSError as exc:
                self.failures.append(exc)
            time.sleep(0.005)

    def __enter__(self) -> Knocker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_an_address_that_stays_keeps_its_socket_while_its_policy_changes(
    gate: SmtpgateProcess, upstream: AiosmtpdUpstream, held: list[ReservedPort]
) -> None:
    """Renamed, then implicit TLS on the same address: the socket stays (nothing
    opened or closed), a client connecting during any of the reloads is greeted,
    the session in progress keeps the old policy."""
    in_progress = begin(held[0].port)
    with Knocker(held[0].port) as knocker:
        for n in range(1, 7):
            sighup(gate, [policy("p2" if n % 2 else "p", address(held[0]), upstream)])
            reloads(gate, n)
    assert knocker.failures == [] and knocker.greeted > 0
    assert [(r["opened"], r["closed"]) for r in reloads(gate, 6)] == [([], [])] * 6
    finish(in_progress, "kept-p")
    sighup(gate, [policy("p2", address(held[0]), upstream, implicit_tls=True)])
    assert reloads(gate, 7)[-1]["event"] == "reloaded"
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP_SSL("127.0.0.1", held[0].port, timeout=10, context=context) as client:
        message = b"Message-ID: <tls-p2@sender.example>\r\n\r\nhi\r\n"
        assert client.sendmail("a@sender.example", ["b@rcpt.example"], message) == {}
    gate.transactions(count=2)
    assert transaction_policies(gate) == {
        "<kept-p@sender.example>": "p",
        "<tls-p2@sender.example>": "p2",
    }


def test_a_listener_that_looks_first_is_never_refused_across_reloads(
    tmp_path: Path, upstream: AiosmtpdUpstream, held: list[ReservedPort]
) -> None:
    """Implicit TLS that also takes cleartext clients: smtpgate accepts these
    sockets itself (docs/proxy.md); its acceptor changes hands the same way."""
    config = gate_config(
        upstream.port,
        policy={"listen": address(held[0]), "implicit_tls": True},
        profile={"tls_compliant_only": False},
    )
    with SmtpgateProcess(tmp_path, config) as gate:
        first = gate.policy(POLICY)
        in_progress = begin(held[0].port)  # cleartext: greeted after 2 s of silence
        with Knocker(held[0].port, first=b"QUIT\r\n") as knocker:
            for n in range(1, 5):
                sighup(gate, [{**first, "name": "second" if n % 2 else POLICY}])
                reloads(gate, n)
        assert knocker.failures == [] and knocker.greeted > 0
        assert [r["event"] for r in reloads(gate, 4)] == ["reloaded"] * 4
        finish(in_progress, "kept-p")
        (done,) = gate.transactions()
        assert done["policy"] == POLICY


def test_a_reload_gives_an_implicit_tls_listener_the_new_certificate(
    tmp_path: Path, upstream: AiosmtpdUpstream, held: list[ReservedPort]
) -> None:
    """The socket stays, the acceptor on it is made anew with the new runtime's
    TLS context: a server certificate replaced on disk is presented on an
    implicit-TLS listener after SIGHUP."""
    pki = TestPKI(tmp_path / "pki")
    first, second = pki.issue("first.test"), pki.issue("second.test")
    served = LeafFiles(tmp_path / "server.pem", tmp_path / "server.key", ("first.test",))
    shutil.copy(first.cert, served.cert)
    shutil.copy(first.key, served.key)
    config = gate_config(
        upstream.port,
        policy={"listen": address(held[0]), "implicit_tls": True},
        server_cert=served,
    )
    with SmtpgateProcess(tmp_path / "gate", config) as gate:
        assert presented(held[0].port) == first_certificate(first)
        shutil.copy(second.cert, served.cert)
        shutil.copy(second.key, served.key)
        sighup(gate, gate.config["policies"])
        assert reloads(gate, 1)[0]["event"] == "reloaded"
        assert presented(held[0].port) == first_certificate(second)


def presented(port: int) -> bytes:
    """The certificate the listener on ``port`` presents (DER)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def first_certificate(leaf: LeafFiles) -> bytes:
    return ssl.PEM_cert_to_DER_cert(
        leaf.cert.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    )
