"""A listener change saved through the API is applied by the in-process reload,
and the answer says whether it was (issue 8 item 4; docs/api.md)."""

from __future__ import annotations

import smtplib
import socket

from tests.api.helpers import ConsoleUnderTest
from tests.peers import ReservedPort
from tests.peers.gate_config import ACTION
from tests.peers.upstream import AiosmtpdUpstream

POLICIES = "/api/v1/policies"


def send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert client.sendmail("a@sender.example", ["b@rcpt.example"], b"\r\nhi\r\n") == {}


def refuses(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_policy_added_and_moved_through_the_api_listens_when_the_answer_comes(
    console: ConsoleUnderTest, upstream: AiosmtpdUpstream
) -> None:
    with ReservedPort() as first, ReservedPort() as second, console.admin() as client:
        tag = client.get(POLICIES).headers["ETag"]
        added = client.post(
            POLICIES,
            json={
                "name": "partners",
                "listen": f"127.0.0.1:{first.port}",
                "upstream": f"127.0.0.1:{upstream.port}",
                "proxy_action": ACTION,
            },
            headers={"If-Match": tag},
        )
        assert added.status_code == 201, added.text
        assert added.json()["applied"] is True
        send(first.port)  # no waiting: the answer came after the listener was up
        moved = client.patch(
            f"{POLICIES}/partners",
            json={"listen": f"127.0.0.1:{second.port}"},
            headers={"If-Match": added.headers["ETag"]},
        )
        assert moved.json()["applied"] is True, moved.text
        assert refuses(first.port)
        send(second.port)
        reloaded = console.gate.records("reloaded")
        assert [(r["opened"], r["closed"]) for r in reloaded] == [
            ([f"partners 127.0.0.1:{first.port}"], []),
            ([f"partners 127.0.0.1:{second.port}"], [f"partners 127.0.0.1:{first.port}"]),
        ]
    assert len(upstream.messages) == 2


def test_a_listener_that_cannot_be_opened_is_saved_but_not_applied(
    console: ConsoleUnderTest, upstream: AiosmtpdUpstream
) -> None:
    old_port = console.gate.port()
    with socket.create_server(("127.0.0.1", 0)) as taken, console.admin() as client:
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        policy = client.get(POLICIES).json()[0]["name"]
        tag = client.get(POLICIES).headers["ETag"]
        changed = client.patch(
            f"{POLICIES}/{policy}", json={"listen": busy}, headers={"If-Match": tag}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["applied"] is False
        (failed,) = console.gate.records("reload_failed")
        assert failed["reason"] == f"policies[1].listen: {busy}: address already in use"
        send(old_port)  # the running configuration serves on
    assert len(upstream.messages) == 1
