"""``upstream = "transparent"`` in a real firewall (issue 10): namespaces, nftables, TLS.

A client namespace sends to the *server's* address; the firewall namespace's
nftables rules divert the connection to ``smtpgate serve`` running there
(``redirect`` for port 25, IPv4 and IPv6; ``tproxy`` for port 587); smtpgate
relays to the original destination, the receiving server in the server
namespace. Both legs are TLS with real certificates: the client checks
smtpgate's, smtpgate checks the server's against its address (the only name a
transparent next hop has). See tests/peers/netns.py for the topology and
docs/deployment.md for the same rules in production.

Skipped, with the reason, only where the machine does not allow network
namespaces; nft missing is a failure (``make peers`` installs it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtpgate.config import toml_writer
from tests.peers import ReservedPort, require_binary
from tests.peers.certs import LeafFiles, TestPKI
from tests.peers.gate_config import HOSTNAME, gate_config, rule
from tests.peers.mailsender import SendResult, send_message
from tests.peers.netns import (
    CLIENT_V4,
    CLIENT_V6,
    FIREWALL_V4,
    SERVER_V4,
    SERVER_V6,
    UPLINK_V4,
    Firewall,
    LoopInNamespace,
    namespaces_forbidden,
)
from tests.peers.scripted_upstream import ScriptedUpstream
from tests.peers.smtpgate_proc import SmtpgateProcess, smtpgate_binary
from tests.peers.swaks import run_swaks

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

FORBIDDEN = namespaces_forbidden()
needs_namespaces = pytest.mark.skipif(
    FORBIDDEN is not None, reason=f"this machine forbids network namespaces: {FORBIDDEN}"
)

#: Where the rules divert to: one listener per family for REDIRECT (a wildcard of each
#: family on one port would collide), one with IP_TRANSPARENT for TPROXY.
REDIRECT_V4_PORT, REDIRECT_V6_PORT, TPROXY_PORT, TPROXY_V6_PORT = 2525, 2535, 2587, 2597
#: Port 465 (implicit TLS on both legs) is diverted to a listener that looks at the first
#: bytes itself (the other way in of the accept path, docs/proxy.md).
IMPLICIT_PORT = 2465

RULESET = f"""
table inet smtpgate_test {{
    chain tproxy_prerouting {{
        type filter hook prerouting priority mangle; policy accept;
        meta nfproto ipv4 tcp dport 587 tproxy ip to :{TPROXY_PORT} meta mark set 1 accept
        meta nfproto ipv6 tcp dport 587 tproxy ip6 to :{TPROXY_V6_PORT} meta mark set 1 accept
    }}
    chain nat_prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        meta nfproto ipv4 tcp dport 25 redirect to :{REDIRECT_V4_PORT}
        meta nfproto ipv6 tcp dport 25 redirect to :{REDIRECT_V6_PORT}
        meta nfproto ipv4 tcp dport 465 redirect to :{IMPLICIT_PORT}
    }}
}}
"""

BODY = b"Subject: through the firewall\r\n\r\nintercepted and relayed\r\n"


@dataclass
class Scene:
    net: Firewall
    gate: SmtpgateProcess
    client: LoopInNamespace
    server_loop: LoopInNamespace
    #: The receiving server on ports 25, 587 and 465 (implicit TLS) of the server namespace.
    smtp: ScriptedUpstream
    submission: ScriptedUpstream
    submissions: ScriptedUpstream
    pki: TestPKI

    def send(self, host: str, port: int, *, implicit_tls: bool = False) -> SendResult:
        tls = self.pki.client_context()
        return self.client.run(
            send_message(
                host,
                port,
                sender="alice@sender.test",
                recipients=["bob@rcpt.test"],
                body=BODY,
                starttls=None if implicit_tls else tls,
                require_starttls=not implicit_tls,
                implicit_tls=tls if implicit_tls else None,
                server_hostname=HOSTNAME,
            )
        )

    def received(self, server: ScriptedUpstream, count: int = 1) -> list[bytes]:
        messages = self.server_loop.run(server.wait_for(count))
        return [m.content for m in messages]

    def raw_greeting(self, host: str, port: int) -> bytes:
        """What smtpgate says to a client that connects and waits, up to its close."""

        async def read() -> bytes:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                return await asyncio.wait_for(reader.read(), 20)
            finally:
                writer.close()

        return self.client.run(read())


@dataclass
class Credentials:
    """Made once for the module: keys are slow to generate on a busy machine."""

    pki: TestPKI
    server_leaf: LeafFiles
    gate_leaf: LeafFiles
    #: smtpgate's state_dir, so its proxy CA is generated once too.
    state_dir: Path


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    folder = tmp_path_factory.mktemp("transparent")
    pki = TestPKI(folder / "pki")
    return Credentials(
        pki,
        # The server's certificate names its addresses: what smtpgate checks on a
        # transparent hop.
        pki.issue(SERVER_V4, SERVER_V6, stem="server"),
        pki.issue(HOSTNAME, stem="gate"),
        folder / "state",
    )


@pytest.fixture
def scene(tmp_path: Path, credentials: Credentials) -> Iterator[Scene]:
    if FORBIDDEN is not None:
        pytest.skip(f"this machine forbids network namespaces: {FORBIDDEN}")
    require_binary("ip", "iproute2")
    require_binary("nft", "nftables")
    pki, server_leaf, gate_leaf = credentials.pki, credentials.server_leaf, credentials.gate_leaf
    with Firewall() as net:
        net.nft(RULESET)
        net.route_marked_locally(mark=1, table=100)
        server_loop = LoopInNamespace(net.server)
        client = LoopInNamespace(net.client)
        smtp = ScriptedUpstream(starttls_context=pki.server_context(server_leaf))
        submission = ScriptedUpstream(starttls_context=pki.server_context(server_leaf))
        submissions = ScriptedUpstream(implicit_tls_context=pki.server_context(server_leaf))
        config = gate_config(
            25,
            # Encrypted on both legs or not at all; the server's certificate is verified.
            rules=[rule(sender_encryption="required", recipient_encryption="required")],
            profile={"validate_certificates": True, "ca_file": str(pki.ca_file)},
            server_cert=gate_leaf,
            gateway={"state_dir": str(credentials.state_dir)},
        )
        policy = config["policies"][0]
        config["policies"] = [
            {**policy, "name": name, "listen": listen, "upstream": "transparent", **extra}
            for name, listen, extra in (
                ("redirect4", f"0.0.0.0:{REDIRECT_V4_PORT}", {}),
                ("redirect6", f"[::]:{REDIRECT_V6_PORT}", {}),
                ("tproxy4", f"0.0.0.0:{TPROXY_PORT}", {"tproxy": True}),
                ("tproxy6", f"[::]:{TPROXY_V6_PORT}", {"tproxy": True}),
                (
                    "implicit4",
                    f"0.0.0.0:{IMPLICIT_PORT}",
                    {"implicit_tls": True, "upstream_implicit_tls": True},
                ),
            )
        ]
        gate = SmtpgateProcess(tmp_path / "gate", config, wrapper=Firewall.exec_in(net.firewall))
        try:
            server_loop.run(smtp.start("", 25))
            server_loop.run(submission.start("", 587))
            server_loop.run(submissions.start("", 465))
            gate.start()
            yield Scene(net, gate, client, server_loop, smtp, submission, submissions, pki)
        finally:
            gate.stop()
            for server in (smtp, submission, submissions):
                server_loop.run(server.stop())
            client.stop()
            server_loop.stop()


def delivered_through_tls(scene: Scene, result: SendResult, server: ScriptedUpstream) -> None:
    assert result.accepted, result
    assert result.tls_version.startswith("TLSv1."), result
    [content] = scene.received(server)
    assert content.endswith(b"intercepted and relayed\r\n")
    # The server was asked for STARTTLS: the upstream leg was encrypted too.
    assert b"STARTTLS" in server.commands, server.commands
    [txn] = scene.gate.transactions(outcome="delivered")
    assert txn["upstream_tls"].startswith("TLSv1.")
    assert txn["upstream_verify"] == "ok"  # the certificate names the original destination


@needs_namespaces
def test_redirect_ipv4_relays_to_the_original_destination_with_tls_on_both_legs(
    scene: Scene,
) -> None:
    result = scene.send(SERVER_V4, 25)
    delivered_through_tls(scene, result, scene.smtp)
    [start] = scene.gate.wait_record("session_start")
    assert start["policy"] == "redirect4"
    assert start["client"].startswith(f"{CLIENT_V4}:")
    assert start["destination"] == f"{SERVER_V4}:25"


@needs_namespaces
def test_redirect_ipv6_relays_to_the_original_destination(scene: Scene) -> None:
    result = scene.send(SERVER_V6, 25)
    delivered_through_tls(scene, result, scene.smtp)
    [start] = scene.gate.wait_record("session_start")
    assert start["policy"] == "redirect6"
    assert start["client"].startswith(f"{CLIENT_V6}:")
    assert start["destination"] == f"[{SERVER_V6}]:25"


@needs_namespaces
@pytest.mark.parametrize(
    ("server", "policy", "destination"),
    [(SERVER_V4, "tproxy4", f"{SERVER_V4}:587"), (SERVER_V6, "tproxy6", f"[{SERVER_V6}]:587")],
)
def test_tproxy_relays_to_the_original_destination(
    scene: Scene, server: str, policy: str, destination: str
) -> None:
    result = scene.send(server, 587)
    delivered_through_tls(scene, result, scene.submission)
    [start] = scene.gate.wait_record("session_start")
    assert start["policy"] == policy
    assert start["destination"] == destination
    assert scene.smtp.connections == 0


@needs_namespaces
def test_implicit_tls_on_both_legs_through_a_listener_that_looks_first(scene: Scene) -> None:
    result = scene.send(SERVER_V4, 465, implicit_tls=True)
    assert result.accepted, result
    assert result.tls_version.startswith("TLSv1."), result
    [content] = scene.received(scene.submissions)
    assert content.endswith(b"intercepted and relayed\r\n")
    [start] = scene.gate.wait_record("session_start")
    assert (start["policy"], start["destination"]) == ("implicit4", f"{SERVER_V4}:465")
    assert start["client_tls"].startswith("TLSv1.")
    [txn] = scene.gate.transactions(outcome="delivered")
    assert (txn["upstream_tls"].startswith("TLSv1."), txn["upstream_verify"]) == (True, "ok")


@needs_namespaces
def test_swaks_through_the_firewall(scene: Scene) -> None:
    """A real sending client: swaks thinks it talks to the server; smtpgate answers."""
    result = run_swaks(
        25,
        server=SERVER_V4,
        tls="starttls",
        to="carol@rcpt.test",
        wrapper=Firewall.exec_in(scene.net.client),
    )
    assert result.returncode == 0, result
    assert result.end_of_data is not None and result.end_of_data.code == 250, result
    # The banner is smtpgate's, not the server's: the connection was intercepted.
    assert result.replies[0].text.endswith("ESMTP smtpgate"), result
    [content] = scene.received(scene.smtp)
    assert b"carol@rcpt.test" in content


@needs_namespaces
@pytest.mark.parametrize(
    ("port", "policy"), [(REDIRECT_V4_PORT, "redirect4"), (TPROXY_PORT, "tproxy4")]
)
def test_a_client_connecting_to_smtpgate_itself_is_refused_not_looped(
    scene: Scene, port: int, policy: str
) -> None:
    """Not diverted: the original destination is smtpgate's own listener. Relaying there
    would come back forever; the client is told, and nothing is relayed."""
    wire = scene.raw_greeting(FIREWALL_V4, port)
    assert wire == b"421 4.4.6 Mail loop: the original destination is smtpgate itself\r\n"
    [refused] = scene.gate.wait_record("interception_refused")
    assert refused["reason"] == f"{FIREWALL_V4}:{port} is smtpgate's own listener"
    assert refused["reply"] == 421
    [start] = scene.gate.records("session_start")
    assert start["policy"] == policy
    [end] = scene.gate.wait_record("session_end")
    assert end["reason"] == "interception_refused"
    assert scene.smtp.connections == scene.submission.connections == 0


@needs_namespaces
def test_the_firewall_relays_from_its_own_address(scene: Scene) -> None:
    """The upstream leg starts at the firewall (no source spoofing): the server sees the
    firewall's uplink address, which is what its access rules must allow."""
    scene.send(SERVER_V4, 25)
    scene.received(scene.smtp)
    # The leg is parked in smtpgate's pool after the message, so it is still established.
    seen = scene.net.run(scene.net.server, ["ss", "-Htn", "state", "established"]).stdout
    assert f"{SERVER_V4}:25 {UPLINK_V4}:" in " ".join(seen.split()), seen


def test_check_refuses_tproxy_without_the_capability(tmp_path: Path) -> None:
    """``smtpgate check --bind`` (and so serve) names the key when IP_TRANSPARENT is
    not allowed: here the capabilities are dropped from the process's bounding set."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() == 0 and setpriv is None:
        pytest.fail("setpriv (util-linux) is needed to drop capabilities")
    drop = (
        [setpriv, "--bounding-set=-net_admin,-net_raw", "--inh-caps=-net_admin,-net_raw"]
        if os.geteuid() == 0 and setpriv
        else []
    )
    with ReservedPort() as port:
        config = gate_config(25, policy={"listen": f"127.0.0.1:{port.port}"})
        config["policies"][0] |= {"upstream": "transparent", "tproxy": True}
        config["gateway"]["state_dir"] = str(tmp_path / "state")
        path = tmp_path / "smtpgate.toml"
        path.write_text(toml_writer.dumps(config))
        proc = subprocess.run(
            [*drop, smtpgate_binary(), "check", "--bind", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 1, proc
    assert (
        f"{path}: policies[1].tproxy: cannot set IP_TRANSPARENT: operation not permitted "
        "(needs CAP_NET_ADMIN or CAP_NET_RAW)"
    ) in proc.stderr, proc.stderr
