"""``smtpgate rules list|add|set|remove|move|enable|disable|test``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from smtpgate.commands.common import (
    BaseOption,
    ConfigOption,
    FileOption,
    JsonOption,
    die,
    fail,
    load,
    print_fields,
    print_json,
    print_rules,
    rule_ref,
    run_edit,
)
from smtpgate.config.editing import ConfigDocument, EditError, rule_summary
from smtpgate.explain import rules_test
from smtpgate.policy.rules import RecipientEncryption, SenderEncryption, TLSNameFrom
from smtpgate.routing.resolver import blocking_lookup

rules_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Encryption rules of a proxy action (first match wins; positions count from 1).",
)

ActionOption = Annotated[str, typer.Option("--action", "-a", help="Proxy action name.")]
RuleArgument = Annotated[str, typer.Argument(help="Rule position (1, 2, ...) or rule name.")]
NameOption = Annotated[str | None, typer.Option("--name", help="Stable rule name.")]
CommentOption = Annotated[str | None, typer.Option("--comment", help="Free text.")]
SenderOption = Annotated[
    str | None, typer.Option("--sender", help="Sender domain pattern (*, example.com, *.x).")
]
RecipientOption = Annotated[str | None, typer.Option("--recipient", help="Recipient pattern.")]
SenderEncOption = Annotated[
    SenderEncryption | None, typer.Option("--sender-encryption", help="Client leg.")
]
RecipientEncOption = Annotated[
    RecipientEncryption | None, typer.Option("--recipient-encryption", help="Upstream leg.")
]
TLSNameFromOption = Annotated[
    TLSNameFrom | None,
    typer.Option(
        "--tls-name-from",
        help="The name the upstream certificate is checked against: the next hop's "
        "host name or the recipient's domain.",
    ),
]


def _fields(
    name: str | None,
    comment: str | None,
    sender: str | None,
    recipient: str | None,
    sender_encryption: SenderEncryption | None,
    recipient_encryption: RecipientEncryption | None,
    tls_name_from: TLSNameFrom | None = None,
) -> dict[str, Any]:
    given = {
        "name": name,
        "comment": comment,
        "sender": sender,
        "recipient": recipient,
        "sender_encryption": sender_encryption.value if sender_encryption else None,
        "recipient_encryption": recipient_encryption.value if recipient_encryption else None,
        "tls_name_from": tls_name_from.value if tls_name_from else None,
    }
    return {k: v for k, v in given.items() if v is not None}


@rules_app.command("list")
def rules_list(
    config: ConfigOption = None,
    action: Annotated[str | None, typer.Option("--action", "-a", help="Only this action.")] = None,
    as_json: JsonOption = False,
) -> None:
    """The rules of each proxy action (or of one), in order."""
    cfg = load(config)
    if action is not None and action not in cfg.actions_by_name:
        die(f"no proxy action named {action!r}; actions: {', '.join(cfg.actions_by_name)}")
    actions = [cfg.action(action)] if action else list(cfg.actions)
    listing = {
        a.name: [rule_summary(i, r) for i, r in enumerate(a.starttls.rules, start=1)]
        for a in actions
    }
    if as_json:
        print_json(listing)
        return
    for name, rules in listing.items():
        typer.echo(f"{name}:")
        if rules:
            print_rules(rules)
        typer.echo(
            "  (no rules: the default applies, sender optional, recipient preferred)"
            if not rules
            else "  then the default: sender optional, recipient preferred"
        )


@rules_app.command("add")
def rules_add(
    config: FileOption,
    action: ActionOption,
    name: NameOption = None,
    comment: CommentOption = None,
    sender: SenderOption = None,
    recipient: RecipientOption = None,
    sender_encryption: SenderEncOption = None,
    recipient_encryption: RecipientEncOption = None,
    tls_name_from: TLSNameFromOption = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Add it switched off.")] = False,
    position: Annotated[
        int | None, typer.Option("--position", help="Insert at this position (default: last).")
    ] = None,
    base: BaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a rule (at the end, or at --position, moving later ones down)."""
    fields = _fields(
        name, comment, sender, recipient, sender_encryption, recipient_encryption, tls_name_from
    )
    if disabled:
        fields["enabled"] = False

    def edit(doc: ConfigDocument) -> dict[str, Any]:
        at = doc.add_rule(action, fields, position)
        return doc.rules(action)[at - 1]

    run_edit(config, base, as_json, edit, lambda r: f"added rule {_label(r)} to {action}")


@rules_app.command("set")
def rules_set(
    config: FileOption,
    action: ActionOption,
    rule: RuleArgument,
    name: NameOption = None,
    comment: CommentOption = None,
    sender: SenderOption = None,
    recipient: RecipientOption = None,
    sender_encryption: SenderEncOption = None,
    recipient_encryption: RecipientEncOption = None,
    tls_name_from: TLSNameFromOption = None,
    base: BaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change keys of one rule; keys not given stay as they are."""
    fields = _fields(
        name, comment, sender, recipient, sender_encryption, recipient_encryption, tls_name_from
    )
    if not fields:
        die("nothing to set; give --sender, --recipient, --sender-encryption, ... ")

    def edit(doc: ConfigDocument) -> dict[str, Any]:
        at = doc.set_rule(action, rule_ref(rule), fields)
        return doc.rules(action)[at - 1]

    run_edit(config, base, as_json, edit, lambda r: f"changed rule {_label(r)} of {action}")


@rules_app.command("remove")
def rules_remove(
    config: FileOption,
    action: ActionOption,
    rule: RuleArgument,
    base: BaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove one rule; later rules move up."""

    def edit(doc: ConfigDocument) -> dict[str, Any]:
        old = doc.rules(action)[doc.rule_index(action, rule_ref(rule))]
        doc.remove_rule(action, rule_ref(rule))
        return old

    run_edit(config, base, as_json, edit, lambda r: f"removed rule {_label(r)} from {action}")


@rules_app.command("move")
def rules_move(
    config: FileOption,
    action: ActionOption,
    rule: RuleArgument,
    position: Annotated[int | None, typer.Option("--position", help="New position.")] = None,
    up: Annotated[bool, typer.Option("--up", help="One position up.")] = False,
    down: Annotated[bool, typer.Option("--down", help="One position down.")] = False,
    base: BaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move a rule to --position, or one --up or --down (first match wins)."""
    if sum((position is not None, up, down)) != 1:
        die("give exactly one of --position N, --up, --down")

    def edit(doc: ConfigDocument) -> dict[str, Any]:
        at = doc.rule_index(action, rule_ref(rule)) + 1
        count = len(doc.rules(action))
        if (up and at == 1) or (down and at == count):
            die(f"rule {rule} of {action} is already the {'first' if up else 'last'}")
        target = position if position is not None else at - 1 if up else at + 1
        moved = doc.move_rule(action, rule_ref(rule), target)
        return doc.rules(action)[moved - 1]

    run_edit(config, base, as_json, edit, lambda r: f"rule {_label(r)} of {action}")


def _switch(enabled: bool) -> Any:
    def command(
        config: FileOption,
        action: ActionOption,
        rule: RuleArgument,
        base: BaseOption = None,
        as_json: JsonOption = False,
    ) -> None:
        def edit(doc: ConfigDocument) -> dict[str, Any]:
            switch = doc.enable_rule if enabled else doc.disable_rule
            at = switch(action, rule_ref(rule))
            return doc.rules(action)[at - 1]

        word = "enabled" if enabled else "disabled"
        run_edit(config, base, as_json, edit, lambda r: f"{word} rule {_label(r)} of {action}")

    command.__doc__ = (
        "Switch a rule on." if enabled else "Switch a rule off (it stays in place, unused)."
    )
    return command


rules_app.command("enable")(_switch(True))
rules_app.command("disable")(_switch(False))


def _label(rule: dict[str, Any]) -> str:
    return f"{rule['position']} ({rule['name']})" if rule["name"] else str(rule["position"])


@rules_app.command("test")
def rules_test_command(
    sender: Annotated[str, typer.Option("--from", help="Envelope sender address or domain.")],
    recipients: Annotated[
        list[str], typer.Option("--to", help="Envelope recipient address or domain (repeatable).")
    ],
    config: ConfigOption = None,
    action: Annotated[str | None, typer.Option("--action", "-a", help="Proxy action.")] = None,
    policy: Annotated[
        str | None, typer.Option("--policy", "-p", help="Policy (tests its proxy action).")
    ] = None,
    client_tls: Annotated[bool, typer.Option("--client-tls", help="Client leg encrypted.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Which rule decides each recipient and what each leg will do."""
    cfg = load(config)
    try:
        report = rules_test(
            cfg,
            sender=sender,
            recipients=recipients,
            action=action,
            policy=policy,
            client_tls=client_tls,
            lookup=blocking_lookup(cfg.gateway),
        )
    except EditError as exc:
        raise fail(config, exc) from exc
    if as_json:
        print_json(report)
        return
    head = [("action", report["action"])]
    if report["policy"]:
        head.insert(0, ("policy", report["policy"]))
    print_fields(head)
    for result in report["results"]:
        typer.echo("")
        hidden = ("action", "rule_position", "rule_name")  # the rule label shows both
        print_fields(
            (k, _hops_text(v) if k == "next_hops" else v)
            for k, v in result.items()
            if k not in hidden and not (k in ("no_route", "checked_domain") and not v)
        )


def _hops_text(hops: list[dict[str, Any]]) -> str:
    """``mx1.a.test:25 [192.0.2.1] (MX 10), ...``: in the order they would be tried."""
    parts = []
    for hop in hops:
        text = f"{hop['host']}:{hop['port']}"
        if hop["address"] and hop["address"] != hop["host"]:
            text += f" [{hop['address']}]"
        if hop["via"] == "mx":
            text += f" (MX {hop['mx_preference']})"
        elif hop["via"] == "implicit_mx":
            text += " (no MX: its address)"
        if hop["tls_name"] and hop["tls_name"] != hop["host"]:
            text += f" (TLS name {hop['tls_name']})"
        parts.append(text)
    return ", ".join(parts) or "none"
