"""The tests' one configuration builder: one policy -> one proxy action -> one TLS profile.

:func:`gate_config` returns the SPEC.md section 5 shape as a dict, to be written
with the project's own TOML writer (``smtpgate.config.toml_writer.dumps``), for
the in-process gateway of the e2e tests (``make_gate``) and for ``smtpgate
serve`` as a subprocess (:class:`tests.peers.smtpgate_proc.SmtpgateProcess`,
which fills in ``listen``, ``state_dir`` and the log file). Every keyword that
is a mapping adds to (or overrides) the fields of its table; nothing else is
set, so the product's defaults apply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .certs import LeafFiles

__all__ = ["ACTION", "HOSTNAME", "POLICY", "PROFILE", "gate_config", "rule"]

HOSTNAME = "mx.example.test"
POLICY = "p"
ACTION = "A"
PROFILE = "T"


def rule(
    sender: str = "*",
    recipient: str = "*",
    sender_encryption: str = "optional",
    recipient_encryption: str = "preferred",
    *,
    enabled: bool = True,
) -> dict[str, Any]:
    """One encryption rule (SPEC.md section 2), every field spelled out."""
    return {
        "enabled": enabled,
        "sender": sender,
        "recipient": recipient,
        "sender_encryption": sender_encryption,
        "recipient_encryption": recipient_encryption,
    }


def gate_config(
    upstream_port: int,
    *,
    upstream_host: str = "127.0.0.1",
    rules: Sequence[Mapping[str, Any]] = (),
    direction: str = "incoming",
    policy: Mapping[str, Any] | None = None,
    profile: Mapping[str, Any] | None = None,
    general: Mapping[str, Any] | None = None,
    esmtp: Mapping[str, Any] | None = None,
    starttls: Mapping[str, Any] | None = None,
    server_cert: LeafFiles | None = None,
    sni: Sequence[Mapping[str, Any]] = (),
    gateway: Mapping[str, Any] | None = None,
    logging: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Policy ``p`` -> action ``A`` -> profile ``T`` towards ``upstream_host:upstream_port``.

    ``policy``, ``profile``, ``general``, ``esmtp``, ``starttls``, ``gateway`` and
    ``logging``: fields of those tables. ``server_cert``: the client leg's certificate
    (else smtpgate generates one in ``state_dir``); ``sni``: ``[[certificates.sni]]``.
    """
    config: dict[str, Any] = {"gateway": {"hostname": HOSTNAME, **(gateway or {})}}
    if logging:
        config["logging"] = dict(logging)
    certificates: dict[str, Any] = {}
    if server_cert is not None:
        certificates |= {"server_cert": str(server_cert.cert), "server_key": str(server_cert.key)}
    if sni:
        certificates["sni"] = [dict(entry) for entry in sni]
    if certificates:
        config["certificates"] = certificates
    config["console"] = {"enabled": False}
    config["policies"] = [
        {
            "name": POLICY,
            "upstream": f"{upstream_host}:{upstream_port}",
            "proxy_action": ACTION,
            **(policy or {}),
        }
    ]
    config["tls_profiles"] = [{"name": PROFILE, **(profile or {})}]
    action: dict[str, Any] = {"name": ACTION, "direction": direction}
    if general:
        action["general"] = dict(general)
    if esmtp:
        action["esmtp"] = dict(esmtp)
    action["starttls"] = {"tls_profile": PROFILE, "rules": list(rules), **(starttls or {})}
    config["proxy_actions"] = [action]
    return config
