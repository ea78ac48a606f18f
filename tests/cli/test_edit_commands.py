"""The editing commands of issue 8, run as processes against real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

SMTPGATE = str(Path(sys.executable).with_name("smtpgate"))

CONFIG = """\
# corp.example inbound -- maintained by hand and by `smtpgate rules`
[gateway]
hostname = "mx.corp.example"
state_dir = "state"

[[policies]]
name = "inbound"
listen = "127.0.0.1:2525"
upstream = "127.0.0.1:2526"
proxy_action = "Inbound"

[[tls_profiles]]
name = "Strict"
pfs = "required"
ocsp = true                      # partners staple

[[proxy_actions]]
name = "Inbound"
[proxy_actions.starttls]
tls_profile = "Strict"
[[proxy_actions.starttls.rules]]
name = "partners"
sender = "partner.example"       # they insist
sender_encryption = "required"
recipient_encryption = "required"
[[proxy_actions.starttls.rules]]
recipient = "*.legacy.example"
recipient_encryption = "none"
"""


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SMTPGATE, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


def ok(*args: str) -> str:
    result = run(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def as_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json"))


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "smtpgate.toml"
    path.write_text(CONFIG)
    return path


def rules_of(path: Path) -> list[dict[str, Any]]:
    data = tomllib.loads(path.read_text())
    return list(data["proxy_actions"][0]["starttls"]["rules"])


# --- rules ------------------------------------------------------------------------------------


def test_rules_add_inserts_saves_a_version_and_keeps_comments(cfg: Path) -> None:
    out = ok(
        "rules", "add", "-c", str(cfg), "-a", "Inbound", "--name", "bank",
        "--recipient", "bank.example", "--recipient-encryption", "required", "--position", "1",
    )  # fmt: skip
    assert out.splitlines()[0] == "added rule 1 (bank) to Inbound"
    assert "saved as version 2 (etag " in out
    assert out.splitlines()[-1] == "no running server found (no pid file in state_dir)"
    text = cfg.read_text()
    assert "# corp.example inbound -- maintained by hand" in text
    assert 'sender = "partner.example"       # they insist' in text
    assert [r.get("name") for r in rules_of(cfg)] == ["bank", "partners", None]
    assert out.count("\n") == 3 and run("check", "-c", str(cfg)).returncode == 0


def test_a_save_through_a_command_is_in_the_audit_log(cfg: Path) -> None:
    ok("rules", "disable", "-c", str(cfg), "-a", "Inbound", "partners")
    ok("config", "rollback", "-c", str(cfg), "1")
    audit = cfg.parent / "state" / "audit.jsonl"
    assert oct(audit.stat().st_mode & 0o777) == "0o600"
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["via"], r["address"], r["action"], r["target"]) for r in records] == [
        ("command", "local", "rules.disable", str(cfg)),
        ("command", "local", "config.rollback", str(cfg)),
    ]
    versions = as_json("config", "versions", "-c", str(cfg))
    saved = {v["id"]: v for v in (versions if isinstance(versions, list) else versions["versions"])}
    for record in records:
        assert record["who"] == saved[record["version"]]["user"]
        assert record["summary"] == saved[record["version"]]["summary"]
        assert record["signalled"] is False  # no serve runs this file


def test_an_edit_prints_the_warnings_check_would(cfg: Path) -> None:
    catch_all = run("rules", "add", "-c", str(cfg), "-a", "Inbound", "--position", "1")
    assert catch_all.returncode == 0
    assert catch_all.stderr.splitlines() == [
        f"warning: {cfg}: proxy_actions[1].starttls.rules[{n}]: never matches: rules[1] "
        "(* -> *) comes first and matches every sender and recipient this rule would"
        for n in (2, 3)
    ]


def test_rules_list_shows_positions_and_names(cfg: Path) -> None:
    out = ok("rules", "list", "-c", str(cfg), "-a", "Inbound")
    lines = out.splitlines()
    assert lines[0] == "Inbound:"
    assert lines[1].split() == ["#", "name", "on", "sender", "recipient", "sender", "enc.",
                                "recipient", "enc.", "comment"]  # fmt: skip
    assert lines[2].split() == ["1", "partners", "yes", "partner.example", "*", "required",
                                "required", "-"]  # fmt: skip
    assert lines[3].split() == ["2", "-", "yes", "*", "*.legacy.example", "optional", "none", "-"]
    listing = as_json("rules", "list", "-c", str(cfg))
    assert listing["SMTP-Incoming.Standard"] == []
    assert listing["Inbound"][1] == {
        "position": 2,
        "name": None,
        "comment": None,
        "enabled": True,
        "sender": "*",
        "recipient": "*.legacy.example",
        "sender_encryption": "optional",
        "recipient_encryption": "none",
        "tls_name_from": "next_hop",
    }


def test_rules_set_tls_name_from(cfg: Path) -> None:
    """The certificate checked against the recipient's domain: written to the file,
    listed, and refused with the values when misspelled."""
    c = str(cfg)
    changed = as_json("rules", "set", "-c", c, "-a", "Inbound", "1",
                      "--tls-name-from", "recipient_domain")  # fmt: skip
    assert changed["result"]["tls_name_from"] == "recipient_domain"
    assert rules_of(cfg)[0]["tls_name_from"] == "recipient_domain"
    wrong = run("rules", "set", "-c", c, "-a", "Inbound", "1", "--tls-name-from", "mx")
    assert wrong.returncode == 2 and "'next_hop', 'recipient_domain'" in wrong.stderr


def test_rules_set_move_disable_enable_remove(cfg: Path) -> None:
    c = str(cfg)
    changed = as_json("rules", "set", "-c", c, "-a", "Inbound", "2", "--name", "legacy",
                      "--comment", "until the migration")  # fmt: skip
    assert changed["result"]["name"] == "legacy" and changed["saved"] is True
    assert changed["server"] == {
        "signalled": False,
        "pid": None,
        "note": "no running server found (no pid file in state_dir)",
    }
    moved = as_json("rules", "move", "-c", c, "-a", "Inbound", "legacy", "--up")
    assert moved["result"]["position"] == 1
    first = run("rules", "move", "-c", c, "-a", "Inbound", "legacy", "--up")
    assert first.stderr == "error: rule legacy of Inbound is already the first\n"
    assert as_json("rules", "disable", "-c", c, "-a", "Inbound", "partners")["result"] == {
        **as_json("rules", "list", "-c", c, "-a", "Inbound")["Inbound"][1],
    }
    assert rules_of(cfg)[1]["enabled"] is False
    ok("rules", "enable", "-c", c, "-a", "Inbound", "2")
    assert "enabled" not in rules_of(cfg)[1]
    ok("rules", "move", "-c", c, "-a", "Inbound", "1", "--position", "2")
    assert [r.get("name") for r in rules_of(cfg)] == ["partners", "legacy"]
    removed = as_json("rules", "remove", "-c", c, "-a", "Inbound", "legacy")
    assert removed["result"]["recipient"] == "*.legacy.example"
    assert [r.get("name") for r in rules_of(cfg)] == ["partners"]
    summaries = [v["summary"] for v in as_json("config", "versions", "-c", c)["versions"]]
    assert summaries[1:] == [
        "Inbound: set rule 2: name='legacy', comment='until the migration'",
        "Inbound: moved rule 2 to 1",
        "Inbound: disabled rule 2",
        "Inbound: enabled rule 2",
        "Inbound: moved rule 1 to 2",
        "Inbound: removed rule 2 (legacy: * -> *.legacy.example)",
    ]


def test_a_refused_edit_names_the_key_path_and_writes_nothing(cfg: Path) -> None:
    bad = run("rules", "add", "-c", str(cfg), "-a", "Inbound", "--sender", "bad..example")
    assert bad.returncode == 1
    assert bad.stderr == (
        f"error: {cfg}: proxy_actions[1].starttls.rules[3].sender: "
        "pattern 'bad..example' is not a valid domain: Empty Label\n"
    )
    duplicate = run("rules", "set", "-c", str(cfg), "-a", "Inbound", "2", "--name", "partners")
    assert "proxy_actions[1].starttls.rules[2].name: duplicate rule name 'partners'" in (
        duplicate.stderr
    )
    predefined = run("rules", "add", "-c", str(cfg), "-a", "SMTP-Incoming.Standard")
    assert predefined.stderr == (
        f"error: {cfg}: proxy_actions: 'SMTP-Incoming.Standard' is predefined and read-only; "
        "clone it (as 'SMTP-Incoming.Standard.1') and change the copy\n"
    )
    missing = run("rules", "remove", "-c", str(cfg), "-a", "Inbound", "9")
    assert missing.stderr == (
        f"error: {cfg}: proxy_actions[1].starttls.rules: no rule at position 9; "
        "'Inbound' has 2 rules\n"
    )
    assert cfg.read_text() == CONFIG
    assert not (cfg.parent / "state" / "versions").exists() or not list(
        (cfg.parent / "state" / "versions").glob("*.toml")
    )


def test_a_stale_base_version_is_a_conflict(cfg: Path) -> None:
    etag = as_json("config", "versions", "-c", str(cfg))["current_etag"]
    ok("rules", "disable", "-c", str(cfg), "-a", "Inbound", "2", "--base", etag)
    stale = run("rules", "enable", "-c", str(cfg), "-a", "Inbound", "2", "--base", etag)
    assert stale.returncode == 1
    assert stale.stderr.startswith(f"error: {cfg}: changed since it was read (version {etag}, now ")
    assert rules_of(cfg)[1]["enabled"] is False


# --- actions and profiles -----------------------------------------------------------------------


def test_actions_list_show_clone_rename_delete(cfg: Path) -> None:
    c = str(cfg)
    rows = as_json("actions", "list", "-c", c)
    assert [(r["name"], r["kind"]) for r in rows] == [
        ("SMTP-Incoming.Standard", "predefined"),
        ("SMTP-Outgoing.Standard", "predefined"),
        ("Inbound", ""),
    ]
    listed = [line.split() for line in ok("actions", "list", "-c", c).splitlines()]
    assert ["Inbound", "incoming", "Strict", "2", "inbound"] in listed
    shown = as_json("actions", "show", "-c", c, "Inbound")
    assert shown["used_by"] == ["inbound"] and len(shown["rules"]) == 2
    assert "TLS profile: Strict" in ok("actions", "show", "-c", c, "Inbound")
    assert as_json("actions", "clone", "-c", c, "SMTP-Outgoing.Standard")["result"] == (
        "SMTP-Outgoing.Standard.1"
    )
    in_use = run("actions", "delete", "-c", c, "Inbound")
    assert in_use.returncode == 1
    assert in_use.stderr == (
        f"error: {cfg}: proxy_actions[1]: 'Inbound' is used by policies[1].proxy_action "
        "('inbound')\n"
    )
    renamed = ok("actions", "rename", "-c", c, "Inbound", "MX")
    assert renamed.splitlines()[0] == (
        "renamed Inbound to MX; references changed: policies[1].proxy_action"
    )
    data = tomllib.loads(cfg.read_text())
    assert data["policies"][0]["proxy_action"] == "MX"
    ok("actions", "delete", "-c", c, "SMTP-Outgoing.Standard.1")
    assert [a["name"] for a in tomllib.loads(cfg.read_text())["proxy_actions"]] == ["MX"]
    wrong = run("actions", "show", "-c", c, "Nope")
    assert "no proxy action named 'Nope'; there are: SMTP-Incoming.Standard" in wrong.stderr


def test_profiles_show_is_the_console_summary(cfg: Path) -> None:
    c = str(cfg)
    assert ok("profiles", "show", "-c", c, "Strict").splitlines() == [
        "              name: Strict",
        "        predefined: no",
        "          versions: TLS 1.2 and later",
        "               PFS: required (forward-secret key exchange only)",
        "        validation: on (chain and host name checked)",
        "                CA: system trust store",
        "              OCSP: on (an unavailable answer is accepted)",
        "TLS-compliant only: no",
    ]
    summary = as_json("profiles", "show", "-c", c, "TLS-Server.Standard")
    assert summary["read_only"] is True and summary["tls_compliant_only"] is True
    assert as_json("profiles", "clone", "-c", c, "TLS-Server.Standard")["result"] == (
        "TLS-Server.Standard.1"
    )
    ok("profiles", "rename", "-c", c, "Strict", "Partners")
    data = tomllib.loads(cfg.read_text())
    assert data["proxy_actions"][0]["starttls"]["tls_profile"] == "Partners"
    in_use = run("profiles", "delete", "-c", c, "Partners")
    assert "is used by proxy_actions[1].starttls.tls_profile ('Inbound')" in in_use.stderr
    ok("profiles", "delete", "-c", c, "TLS-Server.Standard.1")
    read_only = run("profiles", "delete", "-c", c, "TLS-Client.Standard")
    assert "'TLS-Client.Standard' is predefined and read-only" in read_only.stderr
    names = [r["name"] for r in as_json("profiles", "list", "-c", c)]
    assert names == ["TLS-Client.Standard", "TLS-Server.Standard", "Partners"]


# --- config -------------------------------------------------------------------------------------


def test_config_show_effective_and_defaults(cfg: Path) -> None:
    lines = ok("config", "show", "-c", str(cfg)).splitlines()
    assert 'gateway.hostname = "mx.corp.example"' in lines
    assert "gateway.keep_versions = 50" in lines
    assert 'proxy_actions[1].starttls.rules[2].recipient = "*.legacy.example"' in lines
    assert "policies[1].proxy_protocol = false" in lines
    defaults = ok("config", "show", "--defaults").splitlines()
    assert "gateway.keep_versions = 50" in defaults
    assert 'proxy_actions[].starttls.rules[].recipient_encryption = "preferred"' in defaults
    assert "tls_profiles[].min_version" in "\n".join(defaults)
    assert as_json("config", "show", "-c", str(cfg))["gateway"]["keep_versions"] == 50


def test_config_set_unset(cfg: Path) -> None:
    ok("config", "set", "-c", str(cfg), "gateway.keep_versions", "10")
    ok("config", "set", "-c", str(cfg), "policies[1].upstream", "127.0.0.1:2600")
    data = tomllib.loads(cfg.read_text())
    assert data["gateway"]["keep_versions"] == 10
    assert data["policies"][0]["upstream"] == "127.0.0.1:2600"
    bad = run("config", "set", "-c", str(cfg), "logging.format", "xml")
    assert bad.stderr.startswith(f"error: {cfg}: logging.format: Input should be 'json' or 'text'")
    ok("config", "unset", "-c", str(cfg), "gateway.keep_versions")
    # keys that are only valid together are set in one edit
    alone = run("config", "set", "-c", str(cfg), "certificates.server_cert", "mx.pem")
    assert alone.stderr == (
        f"error: {cfg}: certificates.server_key: server_cert and server_key must both be set "
        "or both be empty\n"
    )
    both = as_json("config", "set", "-c", str(cfg), "certificates.server_cert", "mx.pem",
                   "certificates.server_key", "mx.key")  # fmt: skip
    assert both["result"] == {
        "certificates.server_cert": "mx.pem",
        "certificates.server_key": "mx.key",
    }
    assert both["version"]["summary"] == (
        "set certificates.server_cert = 'mx.pem', certificates.server_key = 'mx.key'"
    )
    ok("config", "unset", "-c", str(cfg), "certificates.server_cert", "certificates.server_key")
    assert "certificates" not in tomllib.loads(cfg.read_text())
    assert "keep_versions" not in cfg.read_text()


def test_config_versions_diff_rollback(cfg: Path) -> None:
    c = str(cfg)
    ok("rules", "disable", "-c", c, "-a", "Inbound", "1")
    ok("config", "set", "-c", c, "gateway.hostname", "mx2.corp.example")
    table = ok("config", "versions", "-c", c).splitlines()
    assert table[0].split() == ["id", "saved", "(UTC)", "by", "etag", "summary"]
    assert table[1].split()[0:3] == ["1", table[1].split()[1], "(on"]
    assert table[3].startswith("*  3 ")
    assert table[3].endswith("set gateway.hostname = 'mx2.corp.example'")
    diff = ok("config", "diff", "-c", c, "2")
    assert diff.startswith("--- version 1\n+++ version 2\n")
    assert "+enabled = false\n" in diff
    restored = ok("config", "rollback", "-c", c, "1")
    assert "saved as version 4 (etag " in restored and "rollback to version 1" in restored
    assert cfg.read_text() == CONFIG
    missing = run("config", "rollback", "-c", c, "99")
    assert missing.stderr == f"error: {cfg}: no version 99 (kept: 1..4)\n"


def test_export_format1_refuses_what_it_cannot_express_unless_lossy(cfg: Path) -> None:
    refused = run("config", "export", "-c", str(cfg), "--format", "1")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"error: {cfg}: proxy_actions[1].starttls.tls_profile: profile 'Strict' is written "
        "inline and reads back as 'Inbound.TLS'",
        f"error: {cfg}: proxy_actions[1].starttls.tls_profile: 'Strict' sets ocsp = true, "
        "which format 1 cannot express",
        f"error: {cfg}: proxy_actions[1].starttls.rules[1].name: rule names are not part of "
        "format 1",
        "error: format 1 cannot express these; nothing exported (change them, or give --lossy "
        "to drop them)",
    ]
    out = cfg.parent / "old.toml"
    lossy = run("config", "export", "-c", str(cfg), "--format", "1", "--lossy", "-o", str(out))
    assert lossy.returncode == 0
    assert lossy.stderr.startswith(f"warning: {cfg}: dropped: proxy_actions[1]")
    data = tomllib.loads(out.read_text())
    assert data["format"] == 1
    assert data["proxy_actions"][0]["starttls"]["pfs"] == "required"
    assert "name" not in data["proxy_actions"][0]["starttls"]["rules"][0]
    assert ok("check", "-c", str(out)).strip().endswith("0 warnings)")
    refused_json = run("config", "export", "-c", str(cfg), "--format", "1", "--json")
    assert refused_json.returncode == 1
    assert json.loads(refused_json.stdout)["exported"] is False
    exported = as_json("config", "export", "-c", str(cfg), "--format", "2")
    assert tomllib.loads(exported["text"])["proxy_actions"][0]["name"] == "Inbound"


# --- rules test ---------------------------------------------------------------------------------


def test_rules_test_by_policy_with_several_recipients(cfg: Path) -> None:
    report = as_json(
        "rules", "test", "-c", str(cfg), "--policy", "inbound", "--from", "a@partner.example",
        "--to", "b@corp.example", "--to", "c@x.legacy.example", "--client-tls",
    )  # fmt: skip
    assert (report["policy"], report["action"]) == ("inbound", "Inbound")
    first, second = report["results"]
    assert (first["rule"], first["rule_name"], first["upstream_mode"]) == (
        "1 (partners)",
        "partners",
        "required",
    )
    assert (second["recipient"], second["rule"]) == ("c@x.legacy.example", "1 (partners)")
    text = ok("rules", "test", "-c", str(cfg), "-p", "inbound", "--from", "z@other.example",
              "--to", "c@x.legacy.example")  # fmt: skip
    assert "                rule: 2" in text.splitlines()


def test_rules_test_validates_addresses_and_names(cfg: Path) -> None:
    c = str(cfg)
    wrong_policy = run("rules", "test", "-c", c, "-p", "outbound", "--from", "a@b.example",
                       "--to", "c@d.example")  # fmt: skip
    assert wrong_policy.stderr == (
        f"error: {cfg}: policies: no policy named 'outbound'; policies: inbound\n"
    )
    wrong_action = run("rules", "test", "-c", c, "-a", "Inbund", "--from", "a@b.example",
                       "--to", "c@d.example")  # fmt: skip
    assert wrong_action.stderr == (
        f"error: {cfg}: proxy_actions: no proxy action named 'Inbund'; actions: "
        "SMTP-Incoming.Standard, SMTP-Outgoing.Standard, Inbound\n"
    )
    bad = run("rules", "test", "-c", c, "-a", "Inbound", "--from", "a@@b.example",
              "--to", "ok@d.example", "--to", "*.d.example")  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == [
        f"error: {cfg}: sender: 'a@@b.example' is not an address: Bad address syntax",
        f"error: {cfg}: recipient: '*.d.example' is a pattern; give an address or a domain",
    ]


# --- crash in the middle of a save ----------------------------------------------------------


def test_a_save_killed_before_its_rename_leaves_the_old_file(cfg: Path) -> None:
    env = dict(os.environ, SMTPGATE_TEST_CRASH_BEFORE_RENAME="1")
    crashed = run("rules", "disable", "-c", str(cfg), "-a", "Inbound", "1", env=env)
    assert crashed.returncode == -signal.SIGKILL
    assert cfg.read_text() == CONFIG
    leftovers = list(cfg.parent.glob(".smtpgate-save-smtpgate.toml.*"))
    assert len(leftovers) == 1 and "enabled = false" in leftovers[0].read_text()
    assert ok("check", "-c", str(cfg))  # the file still loads
    # the next save clears the leftover and records the file as it was
    ok("rules", "disable", "-c", str(cfg), "-a", "Inbound", "1")
    assert not list(cfg.parent.glob(".smtpgate-save-*"))
    assert rules_of(cfg)[0]["enabled"] is False


def test_a_file_broken_by_hand_can_be_rolled_back(cfg: Path) -> None:
    ok("rules", "disable", "-c", str(cfg), "-a", "Inbound", "2")
    saved = cfg.read_text()
    cfg.write_text(saved.replace('proxy_action = "Inbound"', 'proxy_action = "Inbund"'))
    refused = run("rules", "enable", "-c", str(cfg), "-a", "Inbound", "2")
    assert refused.stderr == (
        f"error: {cfg}: policies[1].proxy_action: no proxy action named 'Inbund'\n"
    )
    assert "edited by hand since" in ok("config", "versions", "-c", str(cfg))
    restored = ok("config", "rollback", "-c", str(cfg), "2")
    assert "rollback to version 2" in restored
    assert cfg.read_text() == saved
    users = [v["user"] for v in as_json("config", "versions", "-c", str(cfg))["versions"]]
    assert users[-2] == "(on disk)"  # the broken text is kept too


def test_concurrent_writers_never_lose_an_edit(cfg: Path) -> None:
    """Commands racing on one file: each either lands or is refused as a
    conflict; none overwrites another's rule."""
    from concurrent.futures import ThreadPoolExecutor

    def add(n: int) -> subprocess.CompletedProcess[str]:
        return run("rules", "add", "-c", str(cfg), "-a", "Inbound", "--sender", f"d{n}.example")

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(add, range(12)))
    landed = {f"d{n}.example" for n, r in enumerate(results) if r.returncode == 0}
    for result in results:
        assert result.returncode == 0 or "changed since it was read" in result.stderr
    senders = {r.get("sender") for r in rules_of(cfg)} - {"partner.example", None}
    assert senders == landed
    saved = as_json("config", "versions", "-c", str(cfg))["versions"]
    assert len(saved) == 1 + len(landed)  # the file as found, then one version per landed edit
