"""Settings that load but have no effect: the warnings of ``smtpgate check``.

A warning never stops anything: ``check`` prints one line per warning and
still exits 0, ``serve`` logs one ``config_warning`` record per warning at
start. Both take them from :func:`config_warnings`, a pure function of the
loaded :class:`Config`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from smtpgate.config.errors import Loc, format_loc
from smtpgate.config.schema import Config, ProxyAction
from smtpgate.policy.patterns import DomainPattern, PatternKind
from smtpgate.policy.rules import SenderEncryption


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    loc: Loc
    reason: str

    @property
    def key(self) -> str:
        """The key path as users read it (1-based positions)."""
        return format_loc(self.loc)

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}"


def config_warnings(config: Config) -> list[ConfigWarning]:
    """Every setting of ``config`` that cannot have the effect it asks for."""
    return [ConfigWarning(loc, reason) for loc, reason in _warnings(config)]


def covers(earlier: DomainPattern, later: DomainPattern) -> bool:
    """Whether every domain ``later`` matches is also matched by ``earlier``.

    ``*`` covers everything; ``*.a.example`` covers ``x.a.example`` and
    ``*.x.a.example`` (and itself); an exact domain covers only itself.
    """
    if earlier.kind is PatternKind.ANY:
        return True
    if later.kind is PatternKind.ANY:
        return False
    if earlier.kind is PatternKind.EXACT:
        return later.kind is PatternKind.EXACT and later.domain == earlier.domain
    # earlier is *.D: later must be D's strict subdomain, or *.D / *.sub.D.
    if later.kind is PatternKind.SUBDOMAINS and later.domain == earlier.domain:
        return True
    return later.domain.endswith("." + earlier.domain)


def _warnings(config: Config) -> Iterator[tuple[Loc, str]]:
    for i, action in enumerate(config.proxy_actions):
        yield from _action_warnings(config, i, action)
    yield from _policy_warnings(config)
    yield from _unused(config)


def _action_warnings(config: Config, i: int, action: ProxyAction) -> Iterator[tuple[Loc, str]]:
    starttls = action.starttls
    here: Loc = ("proxy_actions", i, "starttls")
    required = [
        k
        for k, rule in enumerate(starttls.rules)
        if rule.enabled and rule.sender_encryption is SenderEncryption.REQUIRED
    ]
    if starttls.require_tls_for_envelope and not required:
        yield (
            (*here, "require_tls_for_envelope"),
            'has no effect: no enabled rule of this action has sender_encryption = "required"',
        )
    if required and (not action.esmtp.enabled or not starttls.enabled):
        switch = "esmtp.enabled" if not action.esmtp.enabled else "starttls.enabled"
        users = [p for p in config.policies if p.proxy_action == action.name]
        # An implicit-TLS listener needs no STARTTLS: its sessions count as encrypted.
        if not users or any(not p.implicit_tls for p in users):
            for k in required:
                yield (
                    (*here, "rules", k, "sender_encryption"),
                    f'"required" while {switch} = false: STARTTLS is never offered, '
                    "so every matching sender in clear is refused",
                )
    enabled = [(k, rule) for k, rule in enumerate(starttls.rules) if rule.enabled]
    for n, (k, rule) in enumerate(enabled):
        for j, earlier in enabled[:n]:
            if covers(earlier.sender, rule.sender) and covers(earlier.recipient, rule.recipient):
                yield (
                    (*here, "rules", k),
                    f"never matches: {format_loc(('rules', j))} "
                    f"({earlier.sender} -> {earlier.recipient}) comes first and matches "
                    "every sender and recipient this rule would",
                )
                break


def _policy_warnings(config: Config) -> Iterator[tuple[Loc, str]]:
    for i, policy in enumerate(config.policies):
        if policy.proxy_protocol_from and not policy.proxy_protocol:
            yield (
                ("policies", i, "proxy_protocol_from"),
                "has no effect: proxy_protocol is false (no PROXY header is read)",
            )


def _unused(config: Config) -> Iterator[tuple[Loc, str]]:
    # Only the file's own objects: the predefined ones are there whether used or not.
    used_actions = {p.proxy_action for p in config.policies}
    for i, action in enumerate(config.proxy_actions):
        if action.name not in used_actions:
            yield (("proxy_actions", i), f"proxy action {action.name!r} is used by no policy")
    used_profiles = {a.starttls.tls_profile for a in config.actions}
    for k, profile in enumerate(config.tls_profiles):
        if profile.name not in used_profiles:
            yield (("tls_profiles", k), f"TLS profile {profile.name!r} is used by no proxy action")
