"""``smtpgate rules test``: the decisions of SPEC 2 for a sender and its recipients.

:func:`rules_test` is the whole answer (the command's ``--json`` and the
API's rule tester return it as is); :func:`explain` decides one pair, and
:func:`next_hops` says where a recipient's mail would go under a policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from smtpgate.config.editing import Invalid, NotFound
from smtpgate.config.schema import Config, Policy, ProxyAction
from smtpgate.config.upstream import configured_hosts
from smtpgate.policy.decisions import (
    UpstreamTLS,
    checked_domain,
    reject_mail_from_in_clear,
    reject_rcpt_in_clear,
    upstream_tls,
)
from smtpgate.policy.patterns import DomainPattern, PatternError, PatternKind, normalize_domain
from smtpgate.routing.nexthops import NoRoute, Resolution, configured_route
from smtpgate.smtp.address import AddressError, parse_path

#: Looks up the next hops of a domain on a port (``upstream = "mx"``).
RouteLookup = Callable[[str, int], Resolution]


def _domain(address: str) -> str:
    return normalize_domain(address.rpartition("@")[2] if "@" in address else address)


def explain(
    action: ProxyAction, sender: str, recipient: str, *, client_tls: bool
) -> dict[str, Any]:
    rules = action.rule_set
    sender_domain = "" if sender in ("", "<>") else _domain(sender)
    recipient_domain = _domain(recipient)
    match = rules.match(sender_domain, recipient_domain)
    envelope = action.starttls.require_tls_for_envelope
    if reject_mail_from_in_clear(
        rules=rules,
        sender_domain=sender_domain,
        client_encrypted=client_tls,
        require_tls_for_envelope=envelope,
    ):
        client_leg = "530 at MAIL FROM: must issue STARTTLS first"
    elif reject_rcpt_in_clear(
        match=match, client_encrypted=client_tls, require_tls_for_envelope=envelope
    ):
        client_leg = "530 at RCPT TO: must issue STARTTLS first"
    else:
        client_leg = "accepted " + ("encrypted" if client_tls else "in clear")
    mode = upstream_tls(match.rule.recipient_encryption, client_encrypted=client_tls)
    upstream = {
        UpstreamTLS.REQUIRED: "STARTTLS required (451 4.7.5 if unavailable; never in clear)",
        UpstreamTLS.OPPORTUNISTIC: "STARTTLS if offered, else in clear",
        UpstreamTLS.NONE: "in clear (no STARTTLS)",
    }[mode]
    return {
        "action": action.name,
        "sender_domain": sender_domain,
        "recipient_domain": recipient_domain,
        "rule": match.label,
        "rule_position": None if match.position is None else match.position + 1,
        "rule_name": match.rule.name,
        "sender_encryption": str(match.rule.sender_encryption),
        "recipient_encryption": str(match.rule.recipient_encryption),
        "tls_name_from": str(match.rule.tls_name_from),
        "client_leg": client_leg,
        "upstream_leg": upstream,
        "upstream_mode": str(mode),
        "checked_domain": checked_domain(match.rule.tls_name_from, recipient_domain, mode),
    }


def next_hops(
    policy: Policy, domain: str, lookup: RouteLookup | None, *, tls: bool, checked: str = ""
) -> dict[str, Any]:
    """The next hops that would be tried for mail to ``domain``, in order.

    Configured hosts as written; with ``upstream = "mx"`` what ``lookup`` finds
    in DNS now (equal preferences in one of their shuffled orders), or the
    reply a recipient would get when there is no route; without ``lookup``,
    none. Each hop's ``tls_name`` is the name its certificate would be checked
    against: ``checked`` (the recipient domain, see
    :func:`~smtpgate.policy.decisions.checked_domain`) or the hop's host name;
    ``""`` when the leg has no TLS (``tls`` false).
    """
    hosts = configured_hosts(policy.upstream)
    if hosts:
        resolution: Resolution = configured_route([(h.host, h.port) for h in hosts])
    elif lookup is None:
        return {"next_hops": [], "no_route": ""}
    else:
        resolution = lookup(domain, policy.mx_port)
    if isinstance(resolution, NoRoute):
        code, text = resolution.reply
        return {"next_hops": [], "no_route": f"{code} {text} ({resolution.reason})"}
    return {
        "next_hops": [
            {
                "host": hop.host,
                "port": hop.port,
                "address": hop.address,
                "mx_preference": hop.preference,
                "via": str(hop.via),
                "tls_name": (checked or hop.host) if tls else "",
            }
            for hop in resolution.hops
        ],
        "no_route": "",
    }


def check_address(text: str, *, what: str, null_allowed: bool) -> str | None:
    """Why ``text`` is not an address (``local@domain``) or a bare domain, or None."""
    if text in ("", "<>"):
        return None if null_allowed else f"{what}: the null address is only a sender"
    if "@" in text:
        try:
            parse_path(f"<{text}>".encode(), allow_null=False)
        except AddressError as exc:
            return f"{what}: {text!r} is not an address: {str(exc).partition(' ')[2]}"
        return None
    try:
        pattern = DomainPattern.parse(text)
    except PatternError as exc:
        return f"{what}: {text!r} is neither an address nor a domain: {exc}"
    if pattern.kind is not PatternKind.EXACT:
        return f"{what}: {text!r} is a pattern; give an address or a domain"
    return None


def rules_test(
    config: Config,
    *,
    sender: str,
    recipients: Sequence[str],
    action: str | None = None,
    policy: str | None = None,
    client_tls: bool = False,
    lookup: RouteLookup | None = None,
) -> dict[str, Any]:
    """Which rule decides each recipient, and what each leg does.

    The action is ``action``, or the one ``policy`` uses; a wrong name raises
    :class:`NotFound` listing the valid ones, a malformed address
    :class:`Invalid` naming it. With a policy, each result also names the next
    hops (:func:`next_hops`; ``lookup`` asks DNS for ``upstream = "mx"``).
    """
    if (action is None) == (policy is None):
        raise Invalid([("", "give either a proxy action or a policy")])
    if policy is not None:
        if policy not in config.policies_by_name:
            names = ", ".join(config.policies_by_name) or "none"
            raise NotFound([("policies", f"no policy named {policy!r}; policies: {names}")])
        action = config.policy(policy).proxy_action
    assert action is not None
    if action not in config.actions_by_name:
        names = ", ".join(config.actions_by_name)
        raise NotFound([("proxy_actions", f"no proxy action named {action!r}; actions: {names}")])
    if not recipients:
        raise Invalid([("", "give at least one recipient")])
    problems = [check_address(sender, what="sender", null_allowed=True)]
    problems += [check_address(r, what="recipient", null_allowed=False) for r in recipients]
    if any(problems):
        raise Invalid(("", p) for p in problems if p)
    proxy_action = config.action(action)
    results = []
    for recipient in recipients:
        decision = explain(proxy_action, sender, recipient, client_tls=client_tls)
        if policy is not None:
            hops = next_hops(
                config.policy(policy),
                decision["recipient_domain"],
                lookup,
                tls=decision["upstream_mode"] != UpstreamTLS.NONE,
                checked=decision["checked_domain"],
            )
            decision |= hops
        results.append({"recipient": recipient, **decision})
    return {
        "policy": policy,
        "action": action,
        "sender": sender,
        "client_tls": client_tls,
        "results": results,
    }
