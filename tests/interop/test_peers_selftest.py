"""Self-tests of the peer harness (tests/peers), without smtpgate.

Each test drives real programs against each other, so that when an interop test
through the proxy fails, the harness is known to work: swaks -> Postfix,
Postfix -> aiosmtpd (TLS levels may/encrypt), Postfix -> Postfix,
openssl s_client -> Postfix, HAProxy (PROXY v1/v2) -> aiosmtpd.
"""

from __future__ import annotations

import os
import pwd
import smtplib
import socket
import subprocess
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from smtpgate.config import toml_writer
from smtpgate.reserved_port import ReservedPort
from smtpgate.smtp import Reply
from tests.peers import PeerMissing, accepts_connections, require_binary
from tests.peers.certs import LeafFiles, TestPKI
from tests.peers.haproxy import HAProxy
from tests.peers.openssl import s_client
from tests.peers.postfix import PostfixInstance, build_message
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.peers.swaks import SWAKS, parse_transcript, require_swaks_tls, run_swaks
from tests.peers.upstream import AiosmtpdUpstream

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

INSTALL_PEERS = Path(__file__).resolve().parents[2] / "scripts" / "install-peers.sh"

StartPostfix = Callable[..., PostfixInstance]
StartUpstream = Callable[..., AiosmtpdUpstream]


# -- pure helpers ---------------------------------------------------------------


def test_toml_writer_round_trips_the_spec_shape(tmp_path: Path) -> None:
    config = {
        "gateway": {"hostname": "mx.example.test"},
        "policies": [
            {"name": "in", "upstream": "127.0.0.1:2526", "implicit_tls": False},
            {"name": "tls", "upstream": "127.0.0.1:2527", "implicit_tls": True},
        ],
        "tls_profiles": [{"name": "Strict", "min_version": "1.3", "pfs": "required"}],
        "proxy_actions": [
            {
                "name": "A",
                "direction": "incoming",
                "esmtp": {"enabled": True},
                "starttls": {
                    "enabled": True,
                    "tls_profile": "Strict",
                    "rules": [
                        {"sender": "a.test", "sender_encryption": "required"},
                        {"sender": "*.b.test", "recipient_encryption": "none"},
                    ],
                },
            }
        ],
    }
    text = toml_writer.dumps(config)
    assert tomllib.loads(text) == config
    gate = SmtpgateProcess(tmp_path / "gate", config)
    parsed = tomllib.loads(gate.text)
    assert parsed["logging"] == {"format": "json", "file": str(gate.log_file)}
    assert parsed["gateway"]["state_dir"] == str(gate.state_dir)
    assert all(p["listen"].startswith("127.0.0.1:") for p in parsed["policies"])
    assert gate.port("in") != gate.port("tls")


def test_swaks_transcript_parser() -> None:
    transcript = """\
=== Trying 127.0.0.1:2525...
<-  220 mx ESMTP
 -> EHLO client.test
<-  250-mx
<-  250 STARTTLS
 -> STARTTLS
<-  220 2.0.0 Ready to start TLS
=== TLS started with cipher TLSv1.3:TLS_AES_256_GCM_SHA384:256
 ~> EHLO client.test
<~  250 mx
 ~> MAIL FROM:<a@sender.test>
<~  250 2.1.0 Ok
 ~> RCPT TO:<b@receiver.test>
<~* 451 4.7.5 Upstream does not offer STARTTLS
 ~> QUIT
<~  221 2.0.0 Bye
"""
    replies, encrypted, version, cipher = parse_transcript(transcript)
    assert (version, cipher) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384")
    rcpt = [
        (r, tls) for r, tls in zip(replies, encrypted, strict=True) if r.command.startswith("RCPT")
    ]
    assert rcpt[0] == (
        Reply(451, (b"4.7.5 Upstream does not offer STARTTLS",), "RCPT TO:<b@receiver.test>"),
        True,
    )


# -- swaks -> Postfix -------------------------------------------------------------


def test_swaks_starttls_to_postfix_receiver_is_delivered(
    start_postfix: StartPostfix, upstream_cert: LeafFiles
) -> None:
    rcv = start_postfix("rcv", smtpd_cert=upstream_cert, virtual_domains=("receiver.test",))
    res = run_swaks(rcv.port, tls="starttls", to="bob@receiver.test")
    assert res.returncode == 0, res
    assert res.end_of_data is not None and res.end_of_data.code == 250, res
    assert res.inside_tls(res.end_of_data)
    msgs = rcv.wait_delivered(1)
    assert msgs[0]["Delivered-To"] == "bob@receiver.test"
    assert "smtpgate interop (swaks)" in msgs[0]["Subject"]
    # Postfix's view of the TLS session agrees with swaks' view.
    line = rcv.tls_lines("from")[-1]
    assert (line.version, line.cipher) == (res.tls_version, res.tls_cipher)


def test_swaks_in_clear_against_tls_required_postfix_gets_530(
    start_postfix: StartPostfix, upstream_cert: LeafFiles
) -> None:
    rcv = start_postfix(
        "rcvenc",
        smtpd_cert=upstream_cert,
        smtpd_tls_security_level="encrypt",
        virtual_domains=("receiver.test",),
    )
    res = run_swaks(rcv.port, tls="plain")
    assert res.returncode == 23, res  # error in MAIL transaction
    mail = res.reply_to("MAIL")
    assert mail is not None and mail.code == 530 and "STARTTLS" in mail.text, res
    assert rcv.delivered() == []


# -- Postfix (sender) -> aiosmtpd --------------------------------------------------


@pytest.mark.parametrize("level", ["may", "encrypt"])
def test_postfix_sender_uses_starttls_towards_aiosmtpd(
    level: str,
    start_postfix: StartPostfix,
    start_upstream: StartUpstream,
    pki: TestPKI,
    upstream_cert: LeafFiles,
) -> None:
    up = start_upstream(starttls=pki.server_context(upstream_cert))
    snd = start_postfix("snd", relayhost=f"[127.0.0.1]:{up.port}", smtp_tls_security_level=level)
    snd.submit("alice@sender.test", "bob@receiver.test", subject=f"level {level}")
    msg = up.wait_messages(1)[0]
    snd.wait_queue_empty()
    assert msg.rcpt_tos == ["bob@receiver.test"]
    assert msg.mail_from == "alice@sender.test"
    assert f"Subject: level {level}".encode() in msg.data
    assert msg.tls_version in ("TLSv1.2", "TLSv1.3")
    line = snd.tls_lines("to")[-1]
    assert line.peer == f"127.0.0.1[127.0.0.1]:{up.port}"
    assert (line.version, line.cipher) == (msg.tls_version, msg.tls_cipher)
    snd.wait_log(r"status=sent \(250 2\.0\.0 OK queued\)")


def test_postfix_sender_may_falls_back_to_clear(
    start_postfix: StartPostfix, start_upstream: StartUpstream
) -> None:
    up = start_upstream()
    snd = start_postfix("sndmay", relayhost=f"[127.0.0.1]:{up.port}")
    snd.submit("alice@sender.test", "bob@receiver.test")
    msg = up.wait_messages(1)[0]
    snd.wait_queue_empty()
    assert msg.tls_version is None
    assert snd.tls_lines() == []


def test_postfix_sender_encrypt_never_sends_in_clear(
    start_postfix: StartPostfix, start_upstream: StartUpstream
) -> None:
    up = start_upstream()  # no STARTTLS
    snd = start_postfix(
        "sndenc", relayhost=f"[127.0.0.1]:{up.port}", smtp_tls_security_level="encrypt"
    )
    snd.submit("alice@sender.test", "bob@receiver.test")
    snd.wait_log(r"TLS is required, but was not offered")
    assert snd.queue_files(), "the message must stay queued (deferred)"
    assert up.messages == []


def test_sendmail_submission(start_postfix: StartPostfix, start_upstream: StartUpstream) -> None:
    up = start_upstream()
    snd = start_postfix("sndsm", relayhost=f"[127.0.0.1]:{up.port}")
    snd.sendmail("carol@sender.test", ["dave@receiver.test", "erin@receiver.test"])
    msg = up.wait_messages(1)[0]
    assert msg.mail_from == "carol@sender.test"
    assert sorted(msg.rcpt_tos) == ["dave@receiver.test", "erin@receiver.test"]
    snd.wait_queue_empty()


# -- Postfix -> Postfix (the chain the proxy will sit in) ---------------------------


def test_postfix_sender_to_postfix_receiver_logs_agree(
    start_postfix: StartPostfix, upstream_cert: LeafFiles
) -> None:
    rcv = start_postfix("rcv2", smtpd_cert=upstream_cert, virtual_domains=("receiver.test",))
    snd = start_postfix(
        "snd2", relayhost=f"[127.0.0.1]:{rcv.port}", smtp_tls_security_level="encrypt"
    )
    mid = snd.submit("alice@sender.test", "bob@receiver.test")
    delivered = rcv.wait_delivered(1)
    snd.wait_queue_empty()
    assert delivered[0]["Message-ID"] == mid
    out = snd.tls_lines("to")[-1]
    into = rcv.tls_lines("from")[-1]
    assert out.program == "postfix-snd2/smtp" and into.program == "postfix-rcv2/smtpd"
    assert (out.version, out.cipher) == (into.version, into.cipher)
    # The Received: header that Postfix adds records the TLS version too.
    received = " ".join(str(delivered[0]["Received"]).split())
    assert f"(using {into.version} with cipher {into.cipher}" in received


# -- openssl s_client -> Postfix -------------------------------------------------------


def test_openssl_s_client_against_postfix_smtpd(
    start_postfix: StartPostfix, pki: TestPKI, upstream_cert: LeafFiles
) -> None:
    # Three instances at once also proves they do not collide.
    plain = start_postfix("osslany", smtpd_cert=upstream_cert)
    only13 = start_postfix(
        "ossl13", smtpd_cert=upstream_cert, main_cf={"smtpd_tls_protocols": ">=TLSv1.3"}
    )
    pfs = start_postfix(
        "osslpfs", smtpd_cert=upstream_cert, main_cf={"smtpd_tls_exclude_ciphers": "kRSA"}
    )

    r = s_client(plain.port, tls1_2=True, ca_file=pki.ca_file)
    assert r.ok and r.version == "TLSv1.2", r
    assert r.verify_code == 0, r
    r = s_client(plain.port, tls1_3=True)
    assert r.ok and r.version == "TLSv1.3" and r.cipher and r.cipher.startswith("TLS_"), r
    r = s_client(plain.port, tls1_2=True, cipher="AES128-GCM-SHA256")
    assert r.ok and r.cipher == "AES128-GCM-SHA256", r

    r = s_client(only13.port, tls1_2=True)
    assert not r.ok, r
    assert s_client(only13.port, tls1_3=True).ok

    r = s_client(pfs.port, tls1_2=True, cipher="AES128-GCM-SHA256")
    assert not r.ok, r
    r = s_client(pfs.port, tls1_2=True, cipher="ECDHE")
    assert r.ok and r.cipher and r.cipher.startswith("ECDHE-"), r

    tls = [(t.program, t.version) for t in plain.tls_lines("from")]
    assert ("postfix-osslany/smtpd", "TLSv1.2") in tls
    assert ("postfix-osslany/smtpd", "TLSv1.3") in tls


# -- aiosmtpd upstream via Python clients ---------------------------------------------


def test_aiosmtpd_upstream_records_tls_state(
    start_upstream: StartUpstream, pki: TestPKI, upstream_cert: LeafFiles
) -> None:
    up = start_upstream(starttls=pki.server_context(upstream_cert))
    msg = build_message("a@sender.test", ["b@receiver.test"], subject="x", body="y\n")
    with smtplib.SMTP("127.0.0.1", up.port, timeout=10) as smtp:
        smtp.starttls(context=pki.client_context())  # verifies 127.0.0.1 against the test CA
        smtp.send_message(msg)
    with smtplib.SMTP("127.0.0.1", up.port, timeout=10) as smtp:
        smtp.send_message(msg)
    first, second = up.wait_messages(2)
    assert first.tls_version in ("TLSv1.2", "TLSv1.3") and first.ehlo
    assert second.tls_version is None

    implicit = start_upstream(implicit=pki.server_context(upstream_cert))
    with smtplib.SMTP_SSL("127.0.0.1", implicit.port, context=pki.client_context()) as smtp:
        smtp.send_message(msg)
    assert implicit.wait_messages(1)[0].tls_version in ("TLSv1.2", "TLSv1.3")


# -- HAProxy -> aiosmtpd (PROXY protocol) -----------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_haproxy_passes_the_original_client_address(
    version: int, start_upstream: StartUpstream, start_haproxy: Callable[..., HAProxy]
) -> None:
    up = start_upstream(proxy_protocol=True)
    hap = start_haproxy(up.port, version)
    sock = socket.create_connection(
        ("127.0.0.1", hap.port), timeout=10, source_address=("127.0.0.2", 0)
    )
    client_port = sock.getsockname()[1]
    with smtplib.SMTP(timeout=10) as smtp:
        smtp.sock = sock
        smtp.file = None
        code, _ = smtp.getreply()
        assert code == 220
        smtp.sendmail("a@sender.test", ["b@receiver.test"], b"Subject: proxied\r\n\r\nhi\r\n")
    msg = up.wait_messages(1)[0]
    assert msg.proxy_src == ("127.0.0.2", client_port)
    assert msg.peer[0] == "127.0.0.1"  # HAProxy's own connection


def test_a_reserved_port_is_taken_by_its_server_and_by_nobody_else() -> None:
    with ReservedPort() as reserved:
        with socket.socket() as plain, pytest.raises(OSError, match="in use"):
            plain.bind(("127.0.0.1", reserved.port))  # another program's bind
        others = []
        for _ in range(200):  # the kernel's own picks skip a bound port
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                others.append(probe.getsockname()[1])
        assert reserved.port not in others
        assert not accepts_connections(reserved.port)  # the reservation does not listen
        with (
            socket.create_server(("127.0.0.1", reserved.port)) as server,  # SO_REUSEADDR
            socket.create_connection(("127.0.0.1", reserved.port), timeout=5),
        ):
            server.accept()[0].close()


def test_a_missing_peer_fails_with_a_clear_message() -> None:
    with pytest.raises(PeerMissing, match=r"make peers"):
        require_binary("no-such-peer-binary", "no-such-package")
    assert issubclass(PeerMissing, AssertionError)  # a failure, never a skip


def _swaks_without_net_ssleay(bin_dir: Path) -> Path:
    """A stand-in for Debian's swaks installed without libnet-ssleay-perl: what
    its ``--support`` prints (features on stdout, missing ones on stderr, exit 0)."""
    bin_dir.mkdir()
    fake = bin_dir / "swaks"
    fake.write_text(
        "#!/bin/sh\n"
        "echo '=== Basic AUTH supported'\n"
        "echo '*** TLS not available: requires Net::SSLeay' >&2\n"
    )
    fake.chmod(0o755)
    return fake


def test_a_swaks_without_tls_fails_with_a_clear_message(tmp_path: Path) -> None:
    fake = _swaks_without_net_ssleay(tmp_path / "bin")
    with pytest.raises(
        PeerMissing,
        match=r"cannot do TLS: \*\*\* TLS not available: requires Net::SSLeay "
        r"\(Debian package 'libnet-ssleay-perl'\); run `make peers`",
    ):
        require_swaks_tls(str(fake))


def test_the_installed_swaks_can_do_tls() -> None:
    require_swaks_tls(require_binary(SWAKS, "swaks"))


def _run_installer(path_prefix: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``scripts/install-peers.sh`` as an unprivileged user, so that it only
    checks: without root it reports what it would install and exits 1."""
    env = dict(os.environ)
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    command = ["bash", str(INSTALL_PEERS)]
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        command = [
            require_binary("setpriv", "util-linux"),
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
            *command,
        ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


def test_install_peers_finds_every_peer_able() -> None:
    proc = _run_installer()
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (
        "install-peers: ok: swaks openssl haproxy postfix postgresql nft chromium"
        " rsyslog logrotate systemd_analyze testssl nsd can do what the interop tests need\n"
    )


def test_install_peers_installs_by_capability_not_by_binary() -> None:
    # swaks is there, but cannot do TLS: the installer must want Net::SSLeay. The
    # stand-in lives outside tmp_path, which the unprivileged installer cannot
    # traverse (/tmp/pytest-of-root is 0700).
    with tempfile.TemporaryDirectory(prefix="sgpeers-") as scratch:
        Path(scratch).chmod(0o755)
        bin_dir = Path(scratch) / "bin"
        _swaks_without_net_ssleay(bin_dir)
        proc = _run_installer(bin_dir)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        "install-peers: swaks: cannot do STARTTLS/TLS "
        "(*** TLS not available: requires Net::SSLeay)",
        "install-peers: need root to apt-get install swaks libnet-ssleay-perl",
    ]


def test_install_peers_wants_a_testssl_that_can_scan_smtp() -> None:
    """A testssl without STARTTLS for SMTP or the options tests/peers/scanners.py passes
    (an old or foreign build) is not enough: the installer wants Debian's testssl.sh."""
    with tempfile.TemporaryDirectory(prefix="sgpeers-") as scratch:
        Path(scratch).chmod(0o755)
        bin_dir = Path(scratch) / "bin"
        bin_dir.mkdir()
        fake = bin_dir / "testssl"
        fake.write_text(
            "#!/bin/sh\n"
            "echo '     -t, --starttls <protocol>     STARTTLS'\n"
            "echo '                                   <ftp|imap>'\n"
            "echo '     --jsonfile <file> --add-ca <file> --nodns --openssl-timeout'\n"
            "echo '     --connect-timeout --quiet --protocols --std --renegotiation'\n"
            "echo '     --compression --server-defaults'\n"
        )
        fake.chmod(0o755)
        proc = _run_installer(bin_dir)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        "install-peers: testssl: cannot do STARTTLS for smtp (-t smtp)",
        "install-peers: need root to apt-get install testssl.sh",
    ]
