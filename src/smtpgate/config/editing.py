"""The one editing model over a configuration file (issue 8).

Every front end (the commands, the REST API, the web console) edits through
:class:`ConfigDocument`; none keeps a model of its own.

A :class:`ConfigDocument` holds the file as a ``tomlkit`` document, so the
comments, key order and layout of a hand-written file survive an edit, and
the validated :class:`~smtpgate.config.schema.Config` of that document
(:attr:`ConfigDocument.config`). Each operation works on a copy of the
document, validates the copy with the same schema a file is loaded with
(:func:`smtpgate.config.loader.config_from_data`), and only then replaces the
document: a failed edit raises and changes nothing. Nothing is written to
disk here; :mod:`smtpgate.config.store` saves a document atomically, with
versions and optimistic concurrency.

Interface (stable; the API and console build on it):

- ``ConfigDocument.from_text(text, base_dir)`` / ``ConfigDocument.load(path)``;
  ``.text()`` the TOML as it would be written; ``.config`` the validated
  ``Config``; ``.etag`` the content hash of the text it was loaded from (the
  version a save is based on, see :func:`content_etag`); ``.changes`` one line
  per successful operation (the save summary).
- Rules of a proxy action, addressed by 1-based position (``int``) or by rule
  ``name`` (``str``), see :data:`RuleRef`: ``rules(action)``,
  ``add_rule(action, fields, position=None)``, ``set_rule(action, ref, fields)``,
  ``remove_rule``, ``move_rule(action, ref, to_position)``, ``enable_rule``,
  ``disable_rule``. ``fields`` are rule keys as in the file (``name``,
  ``comment``, ``enabled``, ``sender``, ``recipient``, ``sender_encryption``,
  ``recipient_encryption``, ``tls_name_from``); in ``set_rule`` a value ``None`` removes the key.
- Proxy actions and TLS profiles (``kind`` is :data:`ACTIONS` or
  :data:`PROFILES`): ``clone(kind, name, new_name=None)`` (predefined or user;
  the default new name is the next free ``name.N``, SPEC 3),
  ``rename(kind, old, new)`` (references follow), ``delete(kind, name)``
  (refused with :class:`InUse` naming who references it). Predefined objects
  are read-only (:class:`ReadOnly`).
- Policies: ``add_policy(fields)``, ``remove_policy(name)``; any key of any
  section: ``set_value(path, value)`` / ``unset_value(path)`` with a key path
  as errors show it (``gateway.keep_versions``, ``policies[2].proxy_action``,
  ``proxy_actions[1].general.max_recipients``); ``set_values({path: value,
  ...})`` and ``unset_values([path, ...])`` for keys only valid together;
  ``policy_path(name)``, ``action_path(name)``, ``profile_path(name)`` give
  the path of a named object for that.
- Summaries for lists and the console: :func:`rule_summary`,
  :func:`action_summary`, :func:`profile_summary` (plain JSON-able dicts; the
  commands print them as tables, ``--json`` and the API return them as is).

Errors form one hierarchy, :class:`EditError` (``.errors``: ``(key path,
reason)`` pairs, key paths 1-based as everywhere): :class:`NotFound` (HTTP
404), :class:`ReadOnly` (403), :class:`InUse` and :class:`Conflict` (409),
:class:`Invalid` (422; the schema's own errors, each naming its key path).
"""

from __future__ import annotations

import copy
import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping, MutableMapping, MutableSequence, Sequence
from pathlib import Path
from typing import Any, Final, Literal, Self

import tomlkit
from pydantic import ValidationError
from tomlkit.items import AoT, Array, InlineTable, Table
from tomlkit.toml_document import TOMLDocument

from smtpgate.config.errors import ConfigError, Loc, format_loc
from smtpgate.config.files import profile_file_errors
from smtpgate.config.loader import config_from_data
from smtpgate.config.names import (
    PREDEFINED_ACTION_NAMES,
    PREDEFINED_PROFILE_NAMES,
    clone_name,
)
from smtpgate.config.schema import Config, ProxyAction, RuleEntry, TLSProfile

ACTIONS: Final = "proxy_actions"
PROFILES: Final = "tls_profiles"
Kind = Literal["proxy_actions", "tls_profiles"]

RuleRef = int | str
"""A rule by 1-based position (``3``) or by its ``name`` (``"partners"``)."""

RULE_KEYS = (
    "name",
    "comment",
    "enabled",
    "sender",
    "recipient",
    "sender_encryption",
    "recipient_encryption",
    "tls_name_from",
)

_KIND_WORD = {ACTIONS: "proxy action", PROFILES: "TLS profile"}
_PREDEFINED = {ACTIONS: PREDEFINED_ACTION_NAMES, PROFILES: PREDEFINED_PROFILE_NAMES}
_PATH_PART = re.compile(r"([A-Za-z0-9_-]+)((?:\[\d+\])*)")


# --- errors ------------------------------------------------------------------------


class EditError(Exception):
    """An edit that was refused; the document is unchanged.

    ``errors`` holds ``(key path, reason)`` pairs like :class:`ConfigError`
    (1-based positions); ``str()`` gives one ``path: reason`` line each.
    """

    status = 400

    def __init__(self, errors: Iterable[tuple[str, str]]) -> None:
        self.errors: list[tuple[str, str]] = list(errors)
        super().__init__(
            "\n".join(f"{path}: {reason}" if path else reason for path, reason in self.errors)
        )

    @classmethod
    def at(cls, loc: Loc, reason: str) -> Self:
        return cls([(format_loc(loc), reason)])


class NotFound(EditError):
    """No such rule, action, profile, policy, key or version (HTTP 404)."""

    status = 404


class ReadOnly(EditError):
    """A predefined action or profile cannot be changed (HTTP 403)."""

    status = 403


class InUse(EditError):
    """Deleting an object that others reference (HTTP 409); the reason names them."""

    status = 409


class Conflict(EditError):
    """A name already taken, or a save based on a version that is no longer
    the file's (HTTP 409)."""

    status = 409


class Invalid(EditError):
    """The edit would make a configuration the schema rejects (HTTP 422);
    one entry per problem, each naming its key path."""

    status = 422

    @classmethod
    def from_config_error(cls, exc: ConfigError) -> Invalid:
        return cls(exc.errors)


# --- helpers ---------------------------------------------------------------------------


def content_etag(text: str | bytes) -> str:
    """The version of a file's content: the first 16 hex digits of its SHA-256.
    A hand edit changes it too, so a save based on an older text is detected."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:16]


def parse_key_path(path: str) -> Loc:
    """``"policies[2].listen"`` -> ``("policies", 1, "listen")`` (1-based in, 0-based out)."""
    loc: list[str | int] = []
    for part in path.split("."):
        match = _PATH_PART.fullmatch(part)
        if match is None:
            raise NotFound([(path, "not a key path (e.g. gateway.hostname, policies[1].listen)")])
        loc.append(match[1])
        for index in re.findall(r"\[(\d+)\]", match[2]):
            if int(index) < 1:
                raise NotFound([(path, "positions count from 1")])
            loc.append(int(index) - 1)
    return tuple(loc)


def _plain(value: Any) -> Any:
    """A tomlkit item as plain Python data."""
    unwrap = getattr(value, "unwrap", None)
    return unwrap() if callable(unwrap) else value


def rule_summary(position: int, entry: RuleEntry) -> dict[str, Any]:
    """One rule as lists, ``rules test`` and the API show it (``position`` 1-based)."""
    return {
        "position": position,
        "name": entry.name,
        "comment": entry.comment,
        "enabled": entry.enabled,
        "sender": entry.sender.text,
        "recipient": entry.recipient.text,
        "sender_encryption": str(entry.sender_encryption),
        "recipient_encryption": str(entry.recipient_encryption),
        "tls_name_from": str(entry.tls_name_from),
    }


def profile_summary(profile: TLSProfile) -> dict[str, Any]:
    """What the console shows beside the TLS profile drop-down: versions,
    forward secrecy, certificate validation, CA file, OCSP."""
    versions = f"TLS {profile.min_version} and later"
    pfs = {
        "required": "required (forward-secret key exchange only)",
        "allowed": "allowed (preferred, not required)",
        "none": "not offered (RSA key exchange only)",
    }[profile.pfs]
    validation = (
        "on (chain and host name checked)"
        if profile.validate_certificates
        else "off (any certificate is accepted)"
    )
    if not profile.ocsp:
        ocsp = "off"
    elif profile.ocsp_allow_unavailable:
        ocsp = "on (an unavailable answer is accepted)"
    else:
        ocsp = "on (an answer is required)"
    return {
        "name": profile.name,
        "read_only": profile.read_only,
        "versions": versions,
        "pfs": pfs,
        "validation": validation,
        "ca": str(profile.ca_file) if profile.ca_file else "system trust store",
        "ocsp": ocsp,
        "tls_compliant_only": profile.tls_compliant_only,
        "settings": profile.model_dump(mode="json"),
    }


def action_summary(config: Config, action: ProxyAction) -> dict[str, Any]:
    """A proxy action with its profile and rules, for ``actions show`` and the API."""
    return {
        "name": action.name,
        "read_only": action.read_only,
        "direction": action.direction,
        "tls_profile": action.starttls.tls_profile,
        "starttls": action.starttls.enabled,
        "require_tls_for_envelope": action.starttls.require_tls_for_envelope,
        "used_by": [p.name for p in config.policies if p.proxy_action == action.name],
        "rules": [rule_summary(i, r) for i, r in enumerate(action.starttls.rules, start=1)],
        "settings": action.model_dump(mode="json", exclude={"starttls": {"rules"}}),
    }


# --- the document ------------------------------------------------------------------------


class ConfigDocument:
    """A configuration file being edited (see the module docstring)."""

    def __init__(self, document: TOMLDocument, config: Config, base_dir: Path, etag: str) -> None:
        self._doc = document
        self.config = config
        self.base_dir = base_dir
        self.etag = etag
        self.changes: list[str] = []

    @classmethod
    def from_text(cls, text: str, base_dir: Path) -> ConfigDocument:
        """Parse and validate ``text`` (raises :class:`Invalid`)."""
        try:
            document = tomlkit.parse(text)
        except tomlkit.exceptions.ParseError as exc:
            where = f"line {exc.line}, column {exc.col}"
            raise Invalid([(where, f"TOML syntax error: {exc}")]) from None
        return cls(document, _validate(document, base_dir), base_dir, content_etag(text))

    @classmethod
    def load(cls, path: Path) -> ConfigDocument:
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise NotFound([(str(path), f"cannot read: {exc.strerror or exc}")]) from None
        except UnicodeDecodeError as exc:
            raise Invalid([(str(path), f"not UTF-8 text: {exc.reason}")]) from None
        return cls.from_text(text, path.resolve().parent)

    def text(self) -> str:
        """The TOML text with every edit applied, comments and order kept."""
        return self._doc.as_string()

    @property
    def format(self) -> int:
        return 1 if _plain(self._doc.get("format", 2)) == 1 else 2

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    # -- the edit transaction --

    def _edit(self, summary: str, change: Any) -> None:
        """Apply ``change(document)`` to a copy, validate, then keep it."""
        work = copy.deepcopy(self._doc)
        change(work)
        config = _validate(work, self.base_dir)
        _check_files(config)
        if tomllib.loads(work.as_string()) != work.unwrap():
            # What is validated must be what is written; tomlkit could not lay it out.
            raise Invalid(
                [("", f"{summary}: cannot be written in this file's layout; edit it by hand")]
            )
        self._doc, self.config = work, config
        self.changes.append(summary)

    # -- lookups --

    def _user_index(self, kind: Kind, name: str) -> int:
        names = [o.name for o in getattr(self.config, kind)]
        if name in names:
            return names.index(name)
        if name in _PREDEFINED[kind]:
            raise ReadOnly.at(
                (kind,),
                f"{name!r} is predefined and read-only; clone it "
                f"(as {clone_name(self._merged_names(kind), name)!r}) and change the copy",
            )
        raise self._not_found(kind, name)

    def _not_found(self, kind: Kind, name: str) -> NotFound:
        known = self._merged_names(kind)
        return NotFound.at(
            (kind,), f"no {_KIND_WORD[kind]} named {name!r}; there are: {', '.join(known)}"
        )

    def _merged_names(self, kind: Kind) -> list[str]:
        return [o.name for o in getattr(self.config, _merged(kind))]

    def action_path(self, name: str) -> str:
        return format_loc((ACTIONS, self._user_index(ACTIONS, name)))

    def profile_path(self, name: str) -> str:
        return format_loc((PROFILES, self._user_index(PROFILES, name)))

    def policy_path(self, name: str) -> str:
        return format_loc(("policies", self._policy_index(name)))

    def _policy_index(self, name: str) -> int:
        names = [p.name for p in self.config.policies]
        if name not in names:
            raise NotFound.at(
                ("policies",), f"no policy named {name!r}; there are: {', '.join(names) or 'none'}"
            )
        return names.index(name)

    def rule_index(self, action: str, ref: RuleRef) -> int:
        """0-based index of rule ``ref`` (1-based position or name) of ``action``."""
        try:
            rules = self.config.action(action).starttls.rules
        except KeyError:
            raise self._not_found(ACTIONS, action) from None
        user_names = [a.name for a in self.config.proxy_actions]
        loc: Loc = (
            (ACTIONS, user_names.index(action), "starttls", "rules")
            if action in user_names
            else (ACTIONS,)
        )
        if isinstance(ref, int):
            if not 1 <= ref <= len(rules):
                raise NotFound.at(
                    loc, f"no rule at position {ref}; {action!r} has {len(rules)} rules"
                )
            return ref - 1
        for index, entry in enumerate(rules):
            if entry.name == ref:
                return index
        named = [r.name for r in rules if r.name]
        raise NotFound.at(
            loc,
            f"no rule named {ref!r} in {action!r}; named rules: {', '.join(named) or 'none'}",
        )

    def rules(self, action: str) -> list[dict[str, Any]]:
        try:
            entries = self.config.action(action).starttls.rules
        except KeyError:
            raise self._not_found(ACTIONS, action) from None
        return [rule_summary(i, e) for i, e in enumerate(entries, start=1)]

    def _rules_array(self, doc: TOMLDocument, action_index: int, create: bool) -> Any:
        action = doc[ACTIONS][action_index]
        if "starttls" not in action:
            if not create:
                return []
            action["starttls"] = tomlkit.table()
        elif create and "rules" not in action["starttls"] and _is_dotted(action, "starttls"):
            # `starttls.tls_profile = ...` lines: rules need a [proxy_actions.starttls] table.
            settings = _plain(action["starttls"])
            del action["starttls"]
            action["starttls"] = tomlkit.table()
            for key, value in settings.items():
                action["starttls"][key] = value
        starttls = action["starttls"]
        if "rules" not in starttls:
            if not create:
                return []
            starttls["rules"] = (
                tomlkit.array() if isinstance(starttls, InlineTable) else tomlkit.aot()
            )
        return starttls["rules"]

    # -- rules --

    def add_rule(self, action: str, fields: Mapping[str, Any], position: int | None = None) -> int:
        """Insert a rule before 1-based ``position`` (default: at the end);
        returns its 1-based position."""
        index = self._user_index(ACTIONS, action)
        count = len(self.config.action(action).starttls.rules)
        at = count if position is None else position - 1
        if not 0 <= at <= count:
            raise NotFound.at(
                (ACTIONS, index, "starttls", "rules"),
                f"position {position} is outside 1..{count + 1}",
            )
        _check_rule_keys(fields, (ACTIONS, index, "starttls", "rules", at))

        def change(doc: TOMLDocument) -> None:
            array = self._rules_array(doc, index, create=True)
            array.insert(at, _new_table(array, {k: v for k, v in fields.items() if v is not None}))

        self._edit(f"{action}: added rule {at + 1} ({_describe_rule(fields)})", change)
        return at + 1

    def set_rule(self, action: str, ref: RuleRef, fields: Mapping[str, Any]) -> int:
        index = self._user_index(ACTIONS, action)
        at = self.rule_index(action, ref)
        _check_rule_keys(fields, (ACTIONS, index, "starttls", "rules", at))

        def change(doc: TOMLDocument) -> None:
            table = self._rules_array(doc, index, create=False)[at]
            for key, value in fields.items():
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value

        shown = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        self._edit(f"{action}: set rule {at + 1}: {shown}", change)
        return at + 1

    def remove_rule(self, action: str, ref: RuleRef) -> None:
        index = self._user_index(ACTIONS, action)
        at = self.rule_index(action, ref)
        old = rule_summary(at + 1, self.config.action(action).starttls.rules[at])

        def change(doc: TOMLDocument) -> None:
            del self._rules_array(doc, index, create=False)[at]

        self._edit(f"{action}: removed rule {at + 1} ({_describe_rule(old)})", change)

    def move_rule(self, action: str, ref: RuleRef, to_position: int) -> int:
        index = self._user_index(ACTIONS, action)
        at = self.rule_index(action, ref)
        count = len(self.config.action(action).starttls.rules)
        if not 1 <= to_position <= count:
            raise NotFound.at(
                (ACTIONS, index, "starttls", "rules"),
                f"position {to_position} is outside 1..{count}",
            )

        def change(doc: TOMLDocument) -> None:
            array = self._rules_array(doc, index, create=False)
            item = array[at]
            del array[at]
            array.insert(to_position - 1, item)

        self._edit(f"{action}: moved rule {at + 1} to {to_position}", change)
        return to_position

    def replace_rules(self, action: str, rules: Sequence[Mapping[str, Any]]) -> None:
        """Make ``rules`` the action's whole ordered rule list in one edit (the
        console's Save of its rules table). A rule that means the same as a rule
        in the file keeps that table, so its comments stay with it; a new one is
        written with only the keys whose value is not the default."""
        index = self._user_index(ACTIONS, action)
        for at, fields in enumerate(rules):
            loc = (ACTIONS, index, "starttls", "rules", at)
            if not isinstance(fields, Mapping):
                raise Invalid.at(loc, "a rule is a table of keys")
            _check_rule_keys(fields, loc)
        wanted = [_minimal_rule(fields) for fields in rules]

        def change(doc: TOMLDocument) -> None:
            array = self._rules_array(doc, index, create=True)
            old = list(array)
            new = []
            for fields in wanted:
                meaning = _rule_meaning(fields)
                same = next(
                    (t for t in old if meaning is not None and _rule_meaning(_plain(t)) == meaning),
                    None,
                )
                if same is not None:
                    old.remove(same)
                new.append(same if same is not None else _new_table(array, fields))
            array.clear()
            for table in new:
                array.append(table)

        self._edit(f"{action}: set the rules ({len(wanted)} rules)", change)

    def enable_rule(self, action: str, ref: RuleRef) -> int:
        return self._switch_rule(action, ref, enabled=True)

    def disable_rule(self, action: str, ref: RuleRef) -> int:
        return self._switch_rule(action, ref, enabled=False)

    def _switch_rule(self, action: str, ref: RuleRef, *, enabled: bool) -> int:
        index = self._user_index(ACTIONS, action)
        at = self.rule_index(action, ref)

        def change(doc: TOMLDocument) -> None:
            table = self._rules_array(doc, index, create=False)[at]
            if enabled and "enabled" in table:
                del table["enabled"]  # the default; keeps hand-written files short
            elif not enabled:
                table["enabled"] = False

        word = "enabled" if enabled else "disabled"
        self._edit(f"{action}: {word} rule {at + 1}", change)
        return at + 1

    # -- actions and profiles --

    def clone(self, kind: Kind, name: str, new_name: str | None = None) -> str:
        """Copy action or profile ``name`` (predefined or not) as ``new_name``
        (default: the next free ``name.N``); returns the new name."""
        self._require_format2(kind)
        existing = self._merged_names(kind)
        if name not in existing:
            raise self._not_found(kind, name)
        target = new_name if new_name is not None else clone_name(existing, name)
        if target in existing:
            raise Conflict.at((kind,), f"{_KIND_WORD[kind]} {target!r} already exists")
        source = next(o for o in getattr(self.config, _merged(kind)) if o.name == name)
        user_names = [o.name for o in getattr(self.config, kind)]

        def change(doc: TOMLDocument) -> None:
            if name in user_names:
                table = copy.deepcopy(doc[kind][user_names.index(name)])
            else:
                table = tomlkit.table()
                for key, value in _predefined_data(source).items():
                    table[key] = value
            table["name"] = target
            table.trivia.indent = "\n"  # a blank line before the new [[...]]
            if kind not in doc:
                doc[kind] = tomlkit.aot()
            doc[kind].append(table)

        self._edit(f"cloned {_KIND_WORD[kind]} {name!r} as {target!r}", change)
        return target

    def rename(self, kind: Kind, old: str, new: str) -> list[str]:
        """Rename a user action or profile; every reference follows.
        Returns the key paths of the references that were changed."""
        self._require_format2(kind)
        index = self._user_index(kind, old)
        if new in self._merged_names(kind):
            raise Conflict.at((kind, index, "name"), f"{_KIND_WORD[kind]} {new!r} already exists")
        users = self._references(kind, old)

        def change(doc: TOMLDocument) -> None:
            doc[kind][index]["name"] = new
            for loc in users:
                _set_loc(doc, loc, new)

        self._edit(f"renamed {_KIND_WORD[kind]} {old!r} to {new!r}", change)
        return [format_loc(loc) for loc in users]

    def delete(self, kind: Kind, name: str) -> None:
        """Delete a user action or profile nothing references."""
        self._require_format2(kind)
        index = self._user_index(kind, name)
        users = self._references(kind, name)
        if users:
            named = ", ".join(self._describe_user(loc) for loc in users)
            raise InUse.at((kind, index), f"{name!r} is used by {named}")

        def change(doc: TOMLDocument) -> None:
            del doc[kind][index]
            if not doc[kind]:
                del doc[kind]

        self._edit(f"deleted {_KIND_WORD[kind]} {name!r}", change)

    def _references(self, kind: Kind, name: str) -> list[Loc]:
        """Key paths that name ``name`` explicitly in the file."""
        if kind == ACTIONS:
            return [
                ("policies", i, "proxy_action")
                for i, p in enumerate(self.config.policies)
                if p.proxy_action == name
            ]
        found: list[Loc] = []
        for i, action in enumerate(_plain(self._doc.get(ACTIONS, [])) or []):
            if action.get("starttls", {}).get("tls_profile") == name:
                found.append((ACTIONS, i, "starttls", "tls_profile"))
        return found

    def _describe_user(self, loc: Loc) -> str:
        owner = getattr(self.config, str(loc[0]))[int(loc[1])]
        return f"{format_loc(loc)} ({owner.name!r})"

    def _require_format2(self, kind: Kind) -> None:
        if kind == PROFILES and self.format == 1:
            raise Invalid(
                [
                    (
                        "format",
                        "a format 1 file has no [[tls_profiles]]; set format = 2 "
                        "(smtpgate config set format 2) to edit TLS profiles",
                    )
                ]
            )

    # -- policies and plain keys --

    def add_policy(self, fields: Mapping[str, Any]) -> int:
        """Append a ``[[policies]]`` table; returns its 1-based position."""

        def change(doc: TOMLDocument) -> None:
            if "policies" not in doc:
                doc["policies"] = tomlkit.aot()
            table = _new_table(doc["policies"], fields)
            table.trivia.indent = "\n"
            doc["policies"].append(table)

        self._edit(f"added policy {fields.get('name')!r}", change)
        return len(self.config.policies)

    def remove_policy(self, name: str) -> None:
        index = self._policy_index(name)

        def change(doc: TOMLDocument) -> None:
            del doc["policies"][index]
            if not doc["policies"]:
                del doc["policies"]

        self._edit(f"removed policy {name!r}", change)

    def set_value(self, path: str, value: Any) -> None:
        """Set the key at ``path`` (1-based positions); tables on the way are
        made when missing. Renaming an action or profile this way is refused:
        :meth:`rename` keeps the references."""
        self.set_values({path: value})

    def set_values(self, values: Mapping[str, Any]) -> None:
        """Set several keys in one edit, validated together (for keys that
        only make sense together, as ``certificates.server_cert`` and
        ``server_key``)."""
        locs = [(parse_key_path(path), value) for path, value in values.items()]
        for (loc, _), path in zip(locs, values, strict=True):
            self._check_plain_key(loc, path)

        def change(doc: TOMLDocument) -> None:
            for loc, value in locs:
                _set_loc(doc, loc, value, create=True)

        shown = ", ".join(f"{format_loc(loc)} = {_short(_plain(v))}" for loc, v in locs)
        self._edit(f"set {shown}", change)

    def unset_value(self, path: str) -> None:
        """Remove the key at ``path``, so its default applies."""
        self.unset_values([path])

    def unset_values(self, paths: Sequence[str]) -> None:
        """Remove several keys in one edit, validated together."""
        locs = [parse_key_path(path) for path in paths]
        for loc, path in zip(locs, paths, strict=True):
            self._check_plain_key(loc, path)

        def change(doc: TOMLDocument) -> None:
            for loc in locs:
                parent = _walk(doc, loc[:-1], create=False, path=loc)
                try:
                    del parent[loc[-1]]
                except (KeyError, IndexError):
                    raise NotFound.at(loc, "not set in the file") from None
                _drop_empty_tables(doc, loc)

        self._edit(f"unset {', '.join(format_loc(loc) for loc in locs)}", change)

    def _check_plain_key(self, loc: Loc, path: str) -> None:
        if len(loc) == 3 and loc[0] in (ACTIONS, PROFILES) and loc[2] == "name":
            word = "actions" if loc[0] == ACTIONS else "profiles"
            raise Conflict(
                [(path, f"use `smtpgate {word} rename` so that references follow the name")]
            )


# --- module helpers ----------------------------------------------------------------------


def _merged(kind: Kind) -> str:
    """The :class:`Config` view of predefined and user objects of ``kind``."""
    return "actions" if kind == ACTIONS else "profiles"


def _validate(document: TOMLDocument, base_dir: Path) -> Config:
    try:
        return config_from_data(document.unwrap(), base_dir)
    except ConfigError as exc:
        raise Invalid.from_config_error(exc) from None


def _check_files(config: Config) -> None:
    """Refuse an edit that leaves a file the start would refuse (a reload would fail
    after the save); read here, the reason is the one ``check`` gives."""
    unusable = profile_file_errors(config)
    if unusable:
        raise Invalid([(format_loc(loc), reason) for loc, reason in unusable])


def _drop_empty_tables(doc: Any, loc: Loc) -> None:
    """Remove the tables above a removed key that it left empty (``[certificates]``
    with nothing in it), but never an element of an array of tables."""
    for depth in range(len(loc) - 1, 0, -1):
        if isinstance(loc[depth - 1], int):
            return
        if len(_walk(doc, loc[:depth], create=False, path=loc)):
            return
        del _walk(doc, loc[: depth - 1], create=False, path=loc)[loc[depth - 1]]


def _is_dotted(table: Any, key: str) -> bool:
    """Whether ``key`` is written as dotted keys (``starttls.enabled = true``) in ``table``."""
    body = getattr(getattr(table, "value", None), "body", ())
    return any(k is not None and k.key == key and k.is_dotted() for k, _ in body)


def _check_rule_keys(fields: Mapping[str, Any], loc: Loc) -> None:
    unknown = [k for k in fields if k not in RULE_KEYS]
    if unknown:
        raise Invalid(
            [
                (format_loc((*loc, key)), f"unknown key; rules have: {', '.join(RULE_KEYS)}")
                for key in unknown
            ]
        )


def _rule_meaning(fields: Mapping[str, Any]) -> RuleEntry | None:
    """What a rule's keys mean (None if they are invalid: validation will say why)."""
    try:
        return RuleEntry.model_validate(dict(fields))
    except ValidationError:
        return None


def _minimal_rule(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` without ``null`` values and without the keys that only repeat a default."""
    kept = {k: v for k, v in fields.items() if v is not None}
    meaning = _rule_meaning(kept)
    if meaning is None:
        return kept
    for key in list(kept):
        if _rule_meaning({k: v for k, v in kept.items() if k != key}) == meaning:
            del kept[key]
    return kept


def _describe_rule(fields: Mapping[str, Any]) -> str:
    sender = fields.get("sender") or "*"
    recipient = fields.get("recipient") or "*"
    text = f"{sender} -> {recipient}"
    if fields.get("name"):
        text = f"{fields['name']}: {text}"
    return text


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _new_table(container: Any, fields: Mapping[str, Any]) -> Any:
    """A table for ``container``: a ``[[...]]`` table in an array of tables,
    an inline table in an inline array."""
    table: Any = tomlkit.table() if isinstance(container, AoT) else tomlkit.inline_table()
    for key, value in fields.items():
        table[key] = value
    return table


def _predefined_data(source: TLSProfile | ProxyAction) -> dict[str, Any]:
    """A predefined object written out in full, so the copy reads as what it is."""
    data = source.model_dump(mode="json")
    if isinstance(source, ProxyAction):
        data["starttls"].pop("rules", None)
    return {k: v for k, v in data.items() if v != ""}


def _walk(doc: Any, loc: Loc, *, create: bool, path: Loc) -> Any:
    node = doc
    for depth, part in enumerate(loc):
        here = path[: depth + 1]
        if isinstance(part, int):
            if not isinstance(node, MutableSequence | Array | AoT) or part >= len(node):
                raise NotFound.at(here, "no such position")
            node = node[part]
        else:
            if not isinstance(node, MutableMapping | Table | InlineTable):
                raise NotFound.at(here, "not a table")
            if part not in node:
                if not create:
                    raise NotFound.at(here, "not set in the file")
                node[part] = tomlkit.table()
            node = node[part]
    return node


def _set_loc(doc: Any, loc: Loc, value: Any, *, create: bool = False) -> None:
    parent = _walk(doc, loc[:-1], create=create, path=loc)
    key = loc[-1]
    if isinstance(key, int):
        if not isinstance(parent, MutableSequence | Array | AoT) or key >= len(parent):
            raise NotFound.at(loc, "no such position")
        parent[key] = value
    else:
        if not isinstance(parent, MutableMapping | Table | InlineTable):
            raise NotFound.at(loc, "not a table")
        parent[key] = value
