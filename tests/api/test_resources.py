"""The resources of the API against a real ``smtpgate serve`` (docs/api.md): roles,
ETags, the editing model's errors, versions, the rule tester, certificates, and a
change that reaches the next SMTP session but not the one in progress."""

from __future__ import annotations

import json
import smtplib
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
import trustme

from tests.api.helpers import ConsoleUnderTest
from tests.peers.gate_config import ACTION, POLICY
from tests.peers.smtpgate_proc import smtpgate_binary
from tests.peers.upstream import AiosmtpdUpstream

RULES = f"/api/v1/actions/{ACTION}/rules"
MESSAGE = b"From: a@partner.example\r\nSubject: api\r\n\r\nhello\r\n"
MUST_STARTTLS = (530, b"5.7.0 Must issue a STARTTLS command first")


def etag(client: httpx.Client, path: str = RULES) -> str:
    reply = client.get(path)
    assert reply.status_code == 200, reply.text
    return reply.headers["ETag"]


def test_auditor_reads_but_every_change_is_403(console: ConsoleUnderTest) -> None:
    console.add_user("carol", "carol-password", role="auditor")
    token = console.add_token("monitor", role="auditor")
    before = console.gate.config_file.read_text()
    for client in (console.client(("carol", "carol-password")), console.client(token=token)):
        with client:
            tag = etag(client)
            assert client.get("/api/v1/profiles").status_code == 200
            # The rule tester changes nothing: auditors may use it.
            query = {"sender": "a@x.example", "recipients": ["b@y.example"], "action": ACTION}
            assert client.post("/api/v1/rules/test", json=query).status_code == 200
            reply = client.post(RULES, json={"sender": "x.example"}, headers={"If-Match": tag})
            assert reply.status_code == 403
            assert reply.json()["detail"].endswith("has the auditor role: read only")
            assert client.delete(f"{RULES}/1", headers={"If-Match": tag}).status_code == 403
            assert (
                client.post("/api/v1/versions/1/rollback", headers={"If-Match": tag}).status_code
                == 403
            )
    assert console.gate.config_file.read_text() == before


def test_choices_offer_the_body_settings_picked_from_a_list(console: ConsoleUnderTest) -> None:
    """The action editor's drop-downs for bare_newline and nul_bytes come from here."""
    with console.client(token=console.add_token("editor-page", role="auditor")) as client:
        choices = client.get("/api/v1/choices").json()
    assert choices["bare_newline"] == ["reject", "normalize"]
    assert choices["nul_bytes"] == ["reject", "strip"]


def test_a_stale_etag_is_409_and_writes_nothing(console: ConsoleUnderTest) -> None:
    with console.admin() as client:
        old = etag(client)
        first = client.post(RULES, json={"sender": "a.example"}, headers={"If-Match": old})
        assert first.status_code == 201, first.text
        assert first.headers["ETag"] != old
        written = console.gate.config_file.read_text()
        stale = client.post(RULES, json={"sender": "b.example"}, headers={"If-Match": old})
        assert stale.status_code == 409
        assert stale.json()["detail"].startswith("the configuration changed since you read it")
        assert console.gate.config_file.read_text() == written
        # A change by a command on the same file makes the API's ETag stale too.
        current = first.headers["ETag"]
        command = subprocess.run(
            [
                smtpgate_binary(),
                "rules",
                "disable",
                "1",
                "--action",
                ACTION,
                "--config",
                str(console.gate.config_file),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert command.returncode == 0, command.stderr
        assert client.delete(f"{RULES}/1", headers={"If-Match": current}).status_code == 409
        # Without If-Match nothing is changed either.
        missing = client.delete(f"{RULES}/1")
        assert missing.status_code == 428
        assert client.get(RULES).json()[0]["enabled"] is False


def test_rules_by_position_and_name_with_the_models_errors(console: ConsoleUnderTest) -> None:
    with console.admin() as client:
        tag = etag(client)
        added = client.post(
            RULES,
            json={
                "name": "partners",
                "sender": "partner.example",
                "sender_encryption": "required",
                "position": 1,
            },
            headers={"If-Match": tag},
        )
        assert added.status_code == 201, added.text
        body = added.json()
        assert (body["position"], body["name"], body["applied"]) == (1, "partners", True)
        tag = added.headers["ETag"]
        assert [r["position"] for r in client.get(RULES).json()] == [1, 2]
        assert client.get(f"{RULES}/partners").json()["sender"] == "partner.example"
        moved = client.post(
            f"{RULES}/partners/move", json={"position": 2}, headers={"If-Match": tag}
        )
        assert moved.json()["position"] == 2, moved.text
        tag = moved.headers["ETag"]
        wrong = client.patch(
            f"{RULES}/partners", json={"sender_encryption": "sometimes"}, headers={"If-Match": tag}
        )
        assert wrong.status_code == 422
        assert wrong.json()["errors"] == [
            {
                "key": "proxy_actions[1].starttls.rules[2].sender_encryption",
                "reason": "Input should be 'required', 'none' or 'optional', got 'sometimes'",
            }
        ]
        missing = client.get(f"{RULES}/9")
        assert missing.status_code == 404
        assert missing.json()["detail"].endswith(f"no rule at position 9; '{ACTION}' has 2 rules")
        predefined = client.patch(
            "/api/v1/profiles/TLS-Server.Standard",
            json={"min_version": "1.3"},
            headers={"If-Match": tag},
        )
        assert predefined.status_code == 403
        clone = client.post("/api/v1/profiles/TLS-Server.Standard/clone", headers={"If-Match": tag})
        assert clone.status_code == 201, clone.text
        assert clone.json()["name"] == "TLS-Server.Standard.1"
        assert clone.json()["versions"] == "TLS 1.2 and later"
        in_use = client.delete(
            f"/api/v1/actions/{ACTION}", headers={"If-Match": clone.headers["ETag"]}
        )
        assert in_use.status_code == 409
        assert in_use.json()["detail"] == (
            f"proxy_actions[1]: '{ACTION}' is used by policies[1].proxy_action ('{POLICY}')"
        )


def test_the_rule_tester_answers_as_rules_test_json(console: ConsoleUnderTest) -> None:
    query = {
        "sender": "a@partner.example",
        "recipients": ["b@rcpt.example", "c.example"],
        "policy": POLICY,
    }
    with console.admin() as client:
        reply = client.post("/api/v1/rules/test", json=query)
        assert reply.status_code == 200, reply.text
        bad = client.post("/api/v1/rules/test", json={**query, "policy": "nope"})
    command = subprocess.run(
        [
            smtpgate_binary(),
            "rules",
            "test",
            "--config",
            str(console.gate.config_file),
            "--policy",
            POLICY,
            "--from",
            "a@partner.example",
            "--to",
            "b@rcpt.example",
            "--to",
            "c.example",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert command.returncode == 0, command.stderr
    assert reply.json() == json.loads(command.stdout)
    assert bad.status_code == 404
    assert bad.json()["detail"] == f"policies: no policy named 'nope'; policies: {POLICY}"


def test_versions_diff_and_rollback(console: ConsoleUnderTest) -> None:
    original = console.gate.config_file.read_text()
    with console.admin() as client:
        added = client.post(RULES, json={"sender": "x.example"}, headers={"If-Match": etag(client)})
        assert added.status_code == 201
        versions = client.get("/api/v1/versions").json()
        assert [(v["id"], v["user"]) for v in versions] == [
            (1, "(on disk)"),
            (2, "api:admin from 127.0.0.1"),
        ]
        diff = client.get("/api/v1/versions/2/diff")
        assert '+sender = "x.example"' in diff.json()["diff"].splitlines()
        back = client.post(
            "/api/v1/versions/1/rollback", headers={"If-Match": added.headers["ETag"]}
        )
        assert back.status_code == 200, back.text
        assert back.json() == {"rolled_back_to": 1, "version": 3, "applied": True}
    assert console.gate.config_file.read_text() == original
    audit = [r for r in console.gate.records("audit") if r["via"] == "api"]
    assert [(r["who"], r["address"], r["action"], r["version"]) for r in audit] == [
        ("admin", "127.0.0.1", "rules.add", 2),
        ("admin", "127.0.0.1", "versions.rollback", 3),
    ]
    assert len(console.gate.records("reloaded")) == 2


def test_a_rule_change_reaches_the_next_session_not_the_one_in_progress(
    console: ConsoleUnderTest, upstream: AiosmtpdUpstream
) -> None:
    port = console.gate.port()
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as earlier:
        earlier.ehlo("earlier.example")
        assert earlier.mail("a@partner.example")[0] == 250
        with console.admin() as client:
            changed = client.post(
                RULES,
                json={
                    "name": "partners",
                    "sender": "partner.example",
                    "sender_encryption": "required",
                    "position": 1,
                },
                headers={"If-Match": etag(client)},
            )
            assert changed.status_code == 201, changed.text
            assert changed.json()["applied"] is True
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as later:
            later.ehlo("later.example")
            assert later.mail("a@partner.example")[0] == 250
            assert later.rcpt("b@rcpt.example") == MUST_STARTTLS
        # The session that began before the change still runs on the old rules.
        assert earlier.rcpt("b@rcpt.example")[0] == 250
        assert earlier.data(MESSAGE)[0] == 250
    assert len(upstream.messages) == 1
    delivered = console.gate.transactions(outcome="delivered")
    # Rule 1 of the old rules ("*"), not "1 (partners)" of the new ones.
    assert delivered[0]["rule"] == "1"


def test_a_certificate_upload_is_checked_then_used_by_the_console(
    console: ConsoleUnderTest, tmp_path: Path
) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("mx.example.test", "127.0.0.1")
    other = ca.issue_cert("other.example")
    cert_pem = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    with console.admin() as client:
        # Generated: the ECDSA certificate, and the RSA one beside it.
        listed = client.get("/api/v1/certificates").json()
        tls_dir = console.gate.state_dir / "tls"
        assert (listed["server"]["file"], listed["server"]["configured"]) == (
            str(tls_dir / "server-ecdsa.pem"),
            False,
        )
        assert listed["server_rsa"]["file"] == str(tls_dir / "server.pem")
        tag = etag(client, "/api/v1/certificates")
        mismatch = client.put(
            "/api/v1/certificates/server",
            json={"certificate": cert_pem, "key": other.private_key_pem.bytes().decode()},
            headers={"If-Match": tag},
        )
        assert mismatch.status_code == 422
        assert mismatch.json()["errors"] == [
            {
                "key": "certificates.server_cert",
                "reason": "key: does not match the (first) certificate",
            }
        ]
        assert not (console.gate.state_dir / "tls" / "uploaded").exists()
        uploaded = client.put(
            "/api/v1/certificates/server",
            json={"certificate": cert_pem, "key": leaf.private_key_pem.bytes().decode()},
            headers={"If-Match": tag},
        )
        assert uploaded.status_code == 200, uploaded.text
        assert uploaded.json()["applied"] is True
        assert uploaded.json()["server"]["names"] == ["mx.example.test", "127.0.0.1"]
        # A configured certificate alone: no RSA one beside it.
        assert client.get("/api/v1/certificates").json()["server_rsa"] is None
        ca_pem = client.get("/api/v1/certificates/ca.pem")
        assert ca_pem.headers["content-type"] == "application/x-pem-file"
        assert ca_pem.text == (console.gate.state_dir / "tls" / "ca.pem").read_text()
    key_files = list((console.gate.state_dir / "tls" / "uploaded").glob("*.key"))
    assert [f.stat().st_mode & 0o777 for f in key_files] == [0o600]
    # The next HTTPS handshake presents the uploaded certificate: a client that
    # trusts only its CA gets in, one that trusts only the proxy CA no longer does.
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with httpx.Client(
        verify=context, base_url=console.base_url, auth=("admin", console.admin_password)
    ) as client:
        assert client.get("/api/v1/whoami").status_code == 200
    with (
        console.admin() as client,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get("/api/v1/whoami")


def upload(client: httpx.Client, leaf: trustme.LeafCert) -> httpx.Response:
    return client.put(
        "/api/v1/certificates/server",
        json={
            "certificate": "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems),
            "key": leaf.private_key_pem.bytes().decode(),
        },
        headers={"If-Match": etag(client, "/api/v1/certificates")},
    )


def test_an_rsa_upload_goes_beside_a_configured_ecdsa_certificate(
    console: ConsoleUnderTest,
) -> None:
    ecdsa_ca, rsa_ca = trustme.CA(), trustme.CA(key_type=trustme.KeyType.RSA)
    with console.admin() as client:
        assert upload(client, ecdsa_ca.issue_cert("127.0.0.1")).status_code == 200
        ecdsa_file = client.get("/api/v1/certificates").json()["server"]["file"]
        for renewal in (1, 2):  # a second RSA upload replaces the first one beside it
            rsa_leaf = rsa_ca.issue_cert(
                "127.0.0.1", f"rsa-{renewal}.example", key_type=trustme.KeyType.RSA
            )
            uploaded = upload(client, rsa_leaf)
            assert uploaded.status_code == 200, uploaded.text
            assert uploaded.json()["applied"] is True
            assert uploaded.json()["server_rsa"]["names"] == ["127.0.0.1", f"rsa-{renewal}.example"]
            listed = client.get("/api/v1/certificates").json()
            assert (listed["server"]["file"], listed["server"]["configured"]) == (ecdsa_file, True)
            assert listed["server_rsa"]["configured"] is True
            assert listed["server_rsa"]["names"] == ["127.0.0.1", f"rsa-{renewal}.example"]
    # Both are presented: a client that can only verify RSA gets the RSA one, one
    # that trusts only the ECDSA CA the ECDSA one.
    rsa_only = ssl.create_default_context()
    rsa_ca.configure_trust(rsa_only)
    rsa_only.maximum_version = ssl.TLSVersion.TLSv1_2
    rsa_only.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    ecdsa_only = ssl.create_default_context()
    ecdsa_ca.configure_trust(ecdsa_only)
    for context in (rsa_only, ecdsa_only):
        with httpx.Client(
            verify=context, base_url=console.base_url, auth=("admin", console.admin_password)
        ) as client:
            assert client.get("/api/v1/whoami").status_code == 200


def test_sections_policies_and_action_settings_by_key(console: ConsoleUnderTest) -> None:
    with console.admin() as client:
        tag = etag(client, "/api/v1/sections/gateway")
        gateway = client.patch(
            "/api/v1/sections/gateway", json={"keep_versions": 5}, headers={"If-Match": tag}
        )
        assert gateway.status_code == 200, gateway.text
        assert gateway.json()["keep_versions"] == 5
        tag = gateway.headers["ETag"]
        settings = client.patch(
            f"/api/v1/actions/{ACTION}",
            json={"general.max_recipients": 7, "esmtp.enabled": "yes"},
            headers={"If-Match": tag},
        )
        # One bad key: nothing of the PATCH is written.
        assert settings.status_code == 422
        assert settings.json()["errors"][0]["key"] == "proxy_actions[1].esmtp.enabled"
        assert client.get(f"/api/v1/actions/{ACTION}").headers["ETag"] == tag
        settings = client.patch(
            f"/api/v1/actions/{ACTION}",
            json={"general.max_recipients": 7},
            headers={"If-Match": tag},
        )
        assert settings.json()["settings"]["general"]["max_recipients"] == 7
        policy = client.patch(
            f"/api/v1/policies/{POLICY}",
            json={"proxy_protocol": True},
            headers={"If-Match": settings.headers["ETag"]},
        )
        assert (policy.json()["position"], policy.json()["proxy_protocol"]) == (1, True)
        versions = client.get("/api/v1/versions")
    # The ETag is the version id the commands show.
    listed = subprocess.run(
        [
            smtpgate_binary(),
            "config",
            "versions",
            "--json",
            "--config",
            str(console.gate.config_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert versions.headers["ETag"] == f'"{json.loads(listed.stdout)["current_etag"]}"'
    assert [r["action"] for r in console.gate.records("audit") if r["via"] == "api"] == [
        "sections.set",
        "actions.set",
        "policies.set",
    ]


def test_a_ca_file_that_cannot_be_read_is_refused_for_an_unused_profile_too(
    console: ConsoleUnderTest, tmp_path: Path
) -> None:
    """An unused profile's ca_file is read as a used one's: the edit is 422 naming
    the key, nothing is saved, nothing applied (it used to be saved, applied: true)."""
    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("hello\n")
    with console.admin() as client:
        clone = client.post(
            "/api/v1/profiles/TLS-Client.Standard/clone", headers={"If-Match": etag(client)}
        )
        assert clone.status_code == 201, clone.text
        name = clone.json()["name"]
        saved = console.gate.config_file.read_text()
        versions = client.get("/api/v1/versions").json()
        for ca_file, reason in (
            ("/nonexistent", "/nonexistent: cannot read ca_file: No such file or directory"),
            (str(not_pem), f"{not_pem}: no PEM certificate in ca_file"),
        ):
            reply = client.patch(
                f"/api/v1/profiles/{name}",
                json={"ca_file": ca_file},
                headers={"If-Match": clone.headers["ETag"]},
            )
            assert reply.status_code == 422, reply.text
            assert reply.json()["errors"] == [{"key": "tls_profiles[2].ca_file", "reason": reason}]
        assert console.gate.config_file.read_text() == saved
        assert client.get("/api/v1/versions").json() == versions
        # A file that holds a certificate is taken.
        good = client.patch(
            f"/api/v1/profiles/{name}",
            json={"ca_file": str(console.gate.state_dir / "tls" / "ca.pem")},
            headers={"If-Match": clone.headers["ETag"]},
        )
        assert good.status_code == 200, good.text
        assert good.json()["applied"] is True
