"""The REST API under ``/api/v1`` (docs/api.md): HTTP in, editing model calls, HTTP out.

Every route is a few lines over :class:`~smtpgate.config.editing.ConfigDocument`
(reading and changing), :class:`~smtpgate.config.store.ConfigStore` (versions)
and :func:`smtpgate.explain.rules_test` (the rule tester): the API has no
model and no validation of its own. Request bodies are declared for the
OpenAPI document, but values are checked by the model, whose errors come
back as ``{"detail": ..., "errors": [{"key": ..., "reason": ...}]}`` with
the model's status (404, 403, 409, 422).

Every answer about the configuration carries ``ETag``, the content hash of
the file; every change needs ``If-Match`` with it (``428`` without,
``409`` when the file changed since), answers with the new ``ETag``, is
saved as a version, recorded in the audit log and applied to the running
proxy (``applied`` says whether the reload took it).
"""

from __future__ import annotations

import tomllib
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Body, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from smtpgate.config.editing import (
    ACTIONS,
    PROFILES,
    ConfigDocument,
    EditError,
    Invalid,
    Kind,
    NotFound,
    RuleRef,
    action_summary,
    profile_summary,
)
from smtpgate.config.errors import format_loc
from smtpgate.config.schema import GeneralSettings, ProxyAction, RuleEntry, TLSProfile
from smtpgate.console.auth import Authenticator, Changer, Reader, client_address
from smtpgate.console.backend import Backend, PreconditionRequired, Saved, parse_if_match
from smtpgate.console.certificates import (
    UploadError,
    check_pair,
    describe_file,
    store_pair,
    upload_keys,
)
from smtpgate.console.traffic_routes import router as traffic_router
from smtpgate.explain import rules_test
from smtpgate.policy.rules import RecipientEncryption, SenderEncryption, TLSNameFrom
from smtpgate.routing.resolver import blocking_lookup
from smtpgate.tls.certificates import (
    CertificateError,
    CertificateStore,
    generated_server_certs,
)
from smtpgate.traffic.database import TrafficDatabase

API_PREFIX = "/api/v1"
IfMatch = Annotated[
    str,
    Header(
        min_length=1,
        description="The ETag of the configuration this change is based on (428 without).",
    ),
]
ETAG_HEADERS = {"ETag": {"description": "Version of the configuration (content hash)."}}


class ErrorItem(BaseModel):
    key: str = Field(description="Key path, 1-based positions (policies[1].listen); may be empty.")
    reason: str


class ErrorBody(BaseModel):
    detail: str
    errors: list[ErrorItem] = []


def _error(text: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": text}


ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("No credentials, or wrong ones"),
    403: _error("The auditor role asked for a change, or the object is predefined"),
    404: _error("No such policy, action, profile, rule, section or version"),
    409: _error("Stale If-Match, a name taken, or an object still in use"),
    422: _error("The change would make a configuration the schema rejects"),
    428: _error("A change without If-Match"),
    429: _error("Too many failed logins: wait Retry-After seconds"),
    503: _error("The traffic database cannot be read now"),
}

router = APIRouter(prefix=API_PREFIX, responses=ERRORS)


# --- bodies (shapes only: the editing model checks the values) -----------------------------


class _Open(BaseModel):
    """Keys beyond the declared ones go to the model, which names them if unknown."""

    model_config = ConfigDict(extra="allow")


class RuleFields(_Open):
    name: str | None = None
    comment: str | None = None
    enabled: bool | None = None
    sender: str | None = None
    recipient: str | None = None
    sender_encryption: str | None = Field(None, description="GET /choices lists the values")
    recipient_encryption: str | None = Field(None, description="GET /choices lists the values")
    tls_name_from: str | None = Field(None, description="GET /choices lists the values")


class NewRule(RuleFields):
    position: int | None = Field(None, description="1-based; default: after the last rule")


class Move(BaseModel):
    position: int = Field(description="The rule's new 1-based position.")


DryRun = Annotated[
    bool,
    Query(description="Check the change and answer as it would, without saving anything."),
]


class NewName(BaseModel):
    name: str


class CloneName(BaseModel):
    name: str | None = Field(None, description="Default: the next free NAME.N (SPEC 3).")


class RuleTest(BaseModel):
    sender: str = Field(description="Envelope sender address or domain; empty: the null sender.")
    recipients: list[str] = Field(description="Envelope recipient addresses or domains.")
    action: str | None = None
    policy: str | None = None
    client_tls: bool = False


class CertificateUpload(BaseModel):
    certificate: str = Field(description="PEM chain, the server certificate first.")
    key: str = Field(description="Unencrypted PEM private key of the first certificate.")


# --- helpers ------------------------------------------------------------------------------


def _backend(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


def _read(request: Request, response: Response) -> ConfigDocument:
    document = _backend(request).document()
    response.headers["ETag"] = f'"{document.etag}"'
    return document


def _changed(response: Response, saved: Saved, body: dict[str, Any]) -> dict[str, Any]:
    response.headers["ETag"] = f'"{saved.etag}"'
    return {**body, "version": saved.result.version.id, "applied": saved.applied}


def _change(
    request: Request,
    response: Response,
    account: Changer,
    if_match: str | None,
    action: str,
    target: str,
    edit: Any,
    *,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Open the version the client read, apply ``edit(document)``, save, audit, apply.
    A dry run stops before saving: the answer (or the error) the change would get."""
    backend = _backend(request)
    document = backend.based_on(if_match)
    body = edit(document)
    if dry_run:
        response.headers["ETag"] = f'"{document.etag}"'  # nothing was saved
        return {**(body if isinstance(body, dict) else {}), "dry_run": True}
    saved = backend.save(
        document,
        account=account,
        address=client_address(request),
        action=action,
        target=target,
    )
    return _changed(response, saved, body if isinstance(body, dict) else {})


def _rule_ref(ref: str) -> RuleRef:
    return int(ref) if ref.isdigit() else ref


def _fields(body: BaseModel) -> dict[str, Any]:
    """What the client sent: declared keys it set (``null`` too) and any extra ones."""
    return body.model_dump(exclude_unset=True)


def _rule(document: ConfigDocument, action: str, ref: RuleRef) -> dict[str, Any]:
    rules = document.rules(action)
    return rules[document.rule_index(action, ref)]


def _set_keys(document: ConfigDocument, prefix: str, values: dict[str, Any]) -> None:
    """``{"general.max_recipients": 50, "ca_file": null}`` under ``prefix``; null unsets."""
    if not values:
        raise Invalid([(prefix, "nothing to change: send the keys to set")])
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if value is None:
            document.unset_value(path)
        else:
            document.set_value(path, value)


def _policy(document: ConfigDocument, name: str) -> dict[str, Any]:
    for position, policy in enumerate(document.config.policies, start=1):
        if policy.name == name:
            return {"position": position, **policy.model_dump(mode="json")}
    known = ", ".join(p.name for p in document.config.policies) or "none"
    raise NotFound([("policies", f"no policy named {name!r}; there are: {known}")])


def _action(document: ConfigDocument, name: str) -> dict[str, Any]:
    config = document.config
    if name not in config.actions_by_name:
        known = ", ".join(config.actions_by_name)
        raise NotFound([(ACTIONS, f"no proxy action named {name!r}; there are: {known}")])
    return action_summary(config, config.action(name))


def _profile(document: ConfigDocument, name: str) -> dict[str, Any]:
    for profile in document.config.profiles:
        if profile.name == name:
            return profile_summary(profile)
    known = ", ".join(p.name for p in document.config.profiles)
    raise NotFound([(PROFILES, f"no TLS profile named {name!r}; there are: {known}")])


#: The key of ``PATCH /actions/{name}`` that replaces the whole rule list (the console's Save).
RULES_KEY = "starttls.rules"

ActionName = Annotated[str, Path(description="Proxy action name.")]
ProfileName = Annotated[str, Path(description="TLS profile name.")]
PolicyName = Annotated[str, Path(description="Policy name.")]
RuleRefPath = Annotated[str, Path(description="1-based position or the rule's name.")]


# --- who am I -----------------------------------------------------------------------------


@router.get("/whoami", summary="The account making the request")
async def whoami(account: Reader) -> dict[str, str]:
    return {"name": account.name, "kind": account.kind, "role": str(account.role)}


# --- choices -------------------------------------------------------------------------------


def _literal(model: Any, key: str) -> list[str]:
    return [str(value) for value in get_args(model.model_fields[key].annotation)]


def _rule_default(key: str) -> str:
    return str(RuleEntry.model_fields[key].default)


#: The values of the settings that are picked from a list, read off the schema.
CHOICES: dict[str, Any] = {
    "sender_encryption": [str(v) for v in SenderEncryption],
    "recipient_encryption": [str(v) for v in RecipientEncryption],
    "tls_name_from": [str(v) for v in TLSNameFrom],
    "rule_defaults": {
        "sender_encryption": _rule_default("sender_encryption"),
        "recipient_encryption": _rule_default("recipient_encryption"),
        "tls_name_from": _rule_default("tls_name_from"),
    },
    "direction": _literal(ProxyAction, "direction"),
    "bare_newline": _literal(GeneralSettings, "bare_newline"),
    "nul_bytes": _literal(GeneralSettings, "nul_bytes"),
    "min_version": _literal(TLSProfile, "min_version"),
    "pfs": _literal(TLSProfile, "pfs"),
}


@router.get("/choices", summary="The values of the settings picked from a list, and rule defaults")
async def choices(_: Reader) -> dict[str, Any]:
    return CHOICES


# --- policies -----------------------------------------------------------------------------


@router.get("/policies", summary="Policies (listeners)", responses={200: {"headers": ETAG_HEADERS}})
def list_policies(request: Request, response: Response, _: Reader) -> list[dict[str, Any]]:
    document = _read(request, response)
    return [_policy(document, p.name) for p in document.config.policies]


@router.get("/policies/{name}", summary="One policy")
def get_policy(request: Request, response: Response, _: Reader, name: PolicyName) -> dict[str, Any]:
    return _policy(_read(request, response), name)


@router.post("/policies", summary="Add a policy", status_code=201)
def add_policy(
    request: Request,
    response: Response,
    account: Changer,
    if_match: IfMatch,
    fields: Annotated[dict[str, Any], Body(description="Keys of [[policies]].")] = {},  # noqa: B006
) -> dict[str, Any]:
    def edit(document: ConfigDocument) -> dict[str, Any]:
        document.add_policy(fields)
        return _policy(document, str(fields.get("name")))

    return _change(
        request, response, account, if_match, "policies.add", str(fields.get("name")), edit
    )


@router.patch("/policies/{name}", summary="Change keys of a policy (null: back to the default)")
def change_policy(
    request: Request,
    response: Response,
    account: Changer,
    name: PolicyName,
    if_match: IfMatch,
    values: Annotated[dict[str, Any], Body()] = {},  # noqa: B006
) -> dict[str, Any]:
    def edit(document: ConfigDocument) -> dict[str, Any]:
        _set_keys(document, document.policy_path(name), values)
        return _policy(document, str(values.get("name", name)))

    return _change(request, response, account, if_match, "policies.set", name, edit)


@router.delete("/policies/{name}", summary="Remove a policy")
def remove_policy(
    request: Request,
    response: Response,
    account: Changer,
    name: PolicyName,
    if_match: IfMatch,
) -> dict[str, Any]:
    return _change(
        request,
        response,
        account,
        if_match,
        "policies.remove",
        name,
        lambda document: document.remove_policy(name),
    )


# --- proxy actions and TLS profiles -------------------------------------------------------------


@router.get("/actions", summary="Proxy actions, predefined ones included (read_only)")
def list_actions(request: Request, response: Response, _: Reader) -> list[dict[str, Any]]:
    document = _read(request, response)
    return [action_summary(document.config, a) for a in document.config.actions]


@router.get("/actions/{name}", summary="One proxy action with its rules")
def get_action(request: Request, response: Response, _: Reader, name: ActionName) -> dict[str, Any]:
    return _action(_read(request, response), name)


@router.get("/profiles", summary="TLS profiles with their summary, predefined ones included")
def list_profiles(request: Request, response: Response, _: Reader) -> list[dict[str, Any]]:
    document = _read(request, response)
    return [profile_summary(p) for p in document.config.profiles]


@router.get("/profiles/{name}", summary="One TLS profile and the summary shown beside it")
def get_profile(
    request: Request, response: Response, _: Reader, name: ProfileName
) -> dict[str, Any]:
    return _profile(_read(request, response), name)


def _object_routes(kind: Kind, segment: str, word: str, example: str) -> None:
    """change, clone, rename and delete, the same for actions and profiles."""
    show = _action if kind == ACTIONS else _profile

    @router.patch(
        f"/{segment}/{{name}}",
        summary=f"Change settings of a {word}: {example}; null unsets"
        + ("; starttls.rules: the whole rule list" if kind == ACTIONS else ""),
    )
    def change(
        request: Request,
        response: Response,
        account: Changer,
        name: Annotated[str, Path()],
        if_match: IfMatch,
        values: Annotated[dict[str, Any], Body()] = {},  # noqa: B006
        dry_run: DryRun = False,
    ) -> dict[str, Any]:
        def edit(document: ConfigDocument) -> dict[str, Any]:
            settings = dict(values)
            if kind == ACTIONS:
                path = document.action_path(name)
                if (rules := settings.pop(RULES_KEY, None)) is not None:
                    if not isinstance(rules, list):
                        raise Invalid([(f"{path}.{RULES_KEY}", "a list of rules")])
                    document.replace_rules(name, rules)
                    if not settings:
                        return show(document, name)
            else:
                path = document.profile_path(name)
            _set_keys(document, path, settings)
            return show(document, name)

        return _change(
            request, response, account, if_match, f"{segment}.set", name, edit, dry_run=dry_run
        )

    @router.post(f"/{segment}/{{name}}/clone", summary=f"Clone a {word}", status_code=201)
    def clone(
        request: Request,
        response: Response,
        account: Changer,
        name: Annotated[str, Path()],
        if_match: IfMatch,
        body: CloneName | None = None,
    ) -> dict[str, Any]:
        def edit(document: ConfigDocument) -> dict[str, Any]:
            made = document.clone(kind, name, body.name if body else None)
            return show(document, made)

        return _change(request, response, account, if_match, f"{segment}.clone", name, edit)

    @router.post(f"/{segment}/{{name}}/rename", summary=f"Rename a {word}; references follow")
    def rename(
        request: Request,
        response: Response,
        account: Changer,
        name: Annotated[str, Path()],
        body: NewName,
        if_match: IfMatch,
    ) -> dict[str, Any]:
        def edit(document: ConfigDocument) -> dict[str, Any]:
            changed = document.rename(kind, name, body.name)
            return {**show(document, body.name), "references": changed}

        return _change(request, response, account, if_match, f"{segment}.rename", name, edit)

    @router.delete(f"/{segment}/{{name}}", summary=f"Delete a {word} nothing uses")
    def delete(
        request: Request,
        response: Response,
        account: Changer,
        name: Annotated[str, Path()],
        if_match: IfMatch,
    ) -> dict[str, Any]:
        return _change(
            request,
            response,
            account,
            if_match,
            f"{segment}.delete",
            name,
            lambda document: document.delete(kind, name),
        )


_object_routes(ACTIONS, "actions", "proxy action", '{"general.max_recipients": 50}')
_object_routes(PROFILES, "profiles", "TLS profile", '{"min_version": "1.3"}')


# --- rules ----------------------------------------------------------------------------------


@router.get("/actions/{action}/rules", summary="The ordered encryption rules of an action")
def list_rules(
    request: Request, response: Response, _: Reader, action: ActionName
) -> list[dict[str, Any]]:
    return _read(request, response).rules(action)


@router.get("/actions/{action}/rules/{ref}", summary="One rule, by position or name")
def get_rule(
    request: Request, response: Response, _: Reader, action: ActionName, ref: RuleRefPath
) -> dict[str, Any]:
    return _rule(_read(request, response), action, _rule_ref(ref))


@router.post("/actions/{action}/rules", summary="Add a rule", status_code=201)
def add_rule(
    request: Request,
    response: Response,
    account: Changer,
    action: ActionName,
    body: NewRule,
    if_match: IfMatch,
) -> dict[str, Any]:
    fields = _fields(body)
    position = fields.pop("position", None)

    def edit(document: ConfigDocument) -> dict[str, Any]:
        at = document.add_rule(action, fields, position)
        return _rule(document, action, at)

    return _change(request, response, account, if_match, "rules.add", action, edit)


@router.patch("/actions/{action}/rules/{ref}", summary="Change a rule (null removes a key)")
def change_rule(
    request: Request,
    response: Response,
    account: Changer,
    action: ActionName,
    ref: RuleRefPath,
    body: RuleFields,
    if_match: IfMatch,
) -> dict[str, Any]:
    def edit(document: ConfigDocument) -> dict[str, Any]:
        at = document.set_rule(action, _rule_ref(ref), _fields(body))
        return _rule(document, action, at)

    return _change(request, response, account, if_match, "rules.set", f"{action} rule {ref}", edit)


@router.delete("/actions/{action}/rules/{ref}", summary="Remove a rule")
def remove_rule(
    request: Request,
    response: Response,
    account: Changer,
    action: ActionName,
    ref: RuleRefPath,
    if_match: IfMatch,
) -> dict[str, Any]:
    return _change(
        request,
        response,
        account,
        if_match,
        "rules.remove",
        f"{action} rule {ref}",
        lambda document: document.remove_rule(action, _rule_ref(ref)),
    )


@router.post("/actions/{action}/rules/{ref}/move", summary="Move a rule to another position")
def move_rule(
    request: Request,
    response: Response,
    account: Changer,
    action: ActionName,
    ref: RuleRefPath,
    body: Move,
    if_match: IfMatch,
) -> dict[str, Any]:
    def edit(document: ConfigDocument) -> dict[str, Any]:
        return _rule(document, action, document.move_rule(action, _rule_ref(ref), body.position))

    return _change(request, response, account, if_match, "rules.move", f"{action} rule {ref}", edit)


def _switch_route(enabled: bool) -> None:
    word = "enable" if enabled else "disable"

    @router.post(f"/actions/{{action}}/rules/{{ref}}/{word}", summary=f"{word.title()} a rule")
    def switch(
        request: Request,
        response: Response,
        account: Changer,
        action: ActionName,
        ref: RuleRefPath,
        if_match: IfMatch,
    ) -> dict[str, Any]:
        def edit(document: ConfigDocument) -> dict[str, Any]:
            flip = document.enable_rule if enabled else document.disable_rule
            return _rule(document, action, flip(action, _rule_ref(ref)))

        return _change(
            request, response, account, if_match, f"rules.{word}", f"{action} rule {ref}", edit
        )


_switch_route(True)
_switch_route(False)


@router.post(
    "/rules/test", summary="Which rule decides, and what each leg does (rules test --json)"
)
def test_rules(request: Request, response: Response, _: Reader, body: RuleTest) -> dict[str, Any]:
    document = _read(request, response)
    return rules_test(
        document.config,
        sender=body.sender,
        recipients=body.recipients,
        action=body.action,
        policy=body.policy,
        client_tls=body.client_tls,
        lookup=blocking_lookup(document.config.gateway),
    )


# --- sections ---------------------------------------------------------------------------------

SECTIONS = ("gateway", "logging", "certificates")


@router.get("/sections/{section}", summary="[gateway], [logging] or [certificates]")
def get_section(
    request: Request,
    response: Response,
    _: Reader,
    section: Annotated[str, Path(description="gateway, logging or certificates")],
) -> dict[str, Any]:
    document = _read(request, response)
    if section not in SECTIONS:
        raise NotFound([(section, f"not a section; there are: {', '.join(SECTIONS)}")])
    settings: Any = getattr(document.config, section)
    data: dict[str, Any] = settings.model_dump(mode="json")
    return data


@router.patch("/sections/{section}", summary="Change keys of a section; null unsets")
def change_section(
    request: Request,
    response: Response,
    account: Changer,
    section: Annotated[str, Path()],
    if_match: IfMatch,
    values: Annotated[dict[str, Any], Body()] = {},  # noqa: B006
) -> dict[str, Any]:
    if section not in SECTIONS:
        raise NotFound([(section, f"not a section; there are: {', '.join(SECTIONS)}")])

    def edit(document: ConfigDocument) -> dict[str, Any]:
        _set_keys(document, section, values)
        data: dict[str, Any] = getattr(document.config, section).model_dump(mode="json")
        return data

    return _change(request, response, account, if_match, "sections.set", section, edit)


# --- certificates -------------------------------------------------------------------------------


@router.get("/certificates", summary="The certificates the proxy presents, and its CA")
def list_certificates(request: Request, response: Response, _: Reader) -> dict[str, Any]:
    document = _read(request, response)
    config = document.config
    state_dir, certs = config.gateway.state_dir, config.certificates
    generated, generated_rsa = generated_server_certs(state_dir)
    server = certs.server_cert or generated
    # The RSA certificate presented beside the default one, to clients that need it.
    server_rsa = certs.server_rsa_cert or (generated_rsa if certs.server_cert is None else None)
    ca = certs.ca_cert or state_dir / "tls" / "ca.pem"
    return {
        "server": {"configured": certs.server_cert is not None, **describe_file(server)},
        "server_rsa": None
        if server_rsa is None
        else {"configured": certs.server_rsa_cert is not None, **describe_file(server_rsa)},
        "ca": {"configured": certs.ca_cert is not None, **describe_file(ca)},
        "sni": [{"names": list(entry.names), **describe_file(entry.cert)} for entry in certs.sni],
    }


@router.get(
    "/certificates/ca.pem",
    summary="The proxy CA certificate (PEM), for clients to trust",
    responses={200: {"content": {"application/x-pem-file": {"schema": {"type": "string"}}}}},
)
def download_ca(request: Request, _: Reader) -> Response:
    config = _backend(request).proxy.config
    try:
        pem = CertificateStore.existing_ca_pem(
            config.gateway.state_dir, config.certificates.ca_cert
        )
    except CertificateError as exc:
        raise NotFound([("certificates.ca_cert", str(exc))]) from exc
    if pem is None:
        raise NotFound([("certificates.ca_cert", "no proxy CA yet")])
    return Response(pem, media_type="application/x-pem-file")


@router.put("/certificates/server", summary="Upload the server certificate and key (checked first)")
def upload_server_certificate(
    request: Request,
    response: Response,
    account: Changer,
    body: CertificateUpload,
    if_match: IfMatch,
) -> dict[str, Any]:
    try:
        chain = check_pair(body.certificate, body.key)
    except UploadError as exc:
        raise Invalid([("certificates.server_cert", str(exc))]) from exc

    def edit(document: ConfigDocument) -> dict[str, Any]:
        config = document.config
        cert_key, key_key = upload_keys(chain, config.certificates.server_cert)
        cert, key = store_pair(config.gateway.state_dir, "server", body.certificate, body.key)
        # Both keys in one edit: each alone is invalid (both set or both empty). The
        # model sets one key per edit, so the table is set whole, as the file has it.
        table = tomllib.loads(document.text()).get("certificates", {})
        document.set_value("certificates", {**table, cert_key: str(cert), key_key: str(key)})
        return {"server_rsa" if cert_key == "server_rsa_cert" else "server": describe_file(cert)}

    return _change(request, response, account, if_match, "certificates.upload", "server", edit)


# --- versions -----------------------------------------------------------------------------------


@router.get("/versions", summary="Saved versions of the configuration, oldest first")
def list_versions(request: Request, response: Response, _: Reader) -> list[dict[str, Any]]:
    backend = _backend(request)
    response.headers["ETag"] = f'"{backend.etag()}"'
    return [v.as_json() for v in backend.versions_store().versions()]


@router.get("/versions/{version}", summary="One version with its text")
def get_version(
    request: Request, response: Response, _: Reader, version: Annotated[int, Path(ge=1)]
) -> dict[str, Any]:
    store = _backend(request).versions_store()
    response.headers["ETag"] = f'"{store.current_etag()}"'
    return {**store.version(version).as_json(), "text": store.version_text(version)}


@router.get(
    "/versions/{version}/diff",
    summary="What a version changed (unified diff), or its difference from the file now",
)
def diff_version(
    request: Request,
    _: Reader,
    version: Annotated[int, Path(ge=1)],
    against_current: Annotated[bool, Query()] = False,
) -> dict[str, Any]:
    store = _backend(request).versions_store()
    diff = store.diff(version, against_current=against_current)
    return {"version": version, "against_current": against_current, "diff": diff}


@router.post("/versions/{version}/rollback", summary="Make a version current again (a new version)")
def rollback(
    request: Request,
    response: Response,
    account: Changer,
    version: Annotated[int, Path(ge=1)],
    if_match: IfMatch,
) -> dict[str, Any]:
    saved = _backend(request).rollback(
        version, if_match, account=account, address=client_address(request)
    )
    return _changed(response, saved, {"rolled_back_to": version})


# --- the application ------------------------------------------------------------------------------


def _error_body(exc: EditError) -> dict[str, Any]:
    return {
        "detail": str(exc),
        "errors": [{"key": key, "reason": reason} for key, reason in exc.errors],
    }


async def _edit_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EditError)
    return JSONResponse(_error_body(exc), status_code=exc.status)


async def _request_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's shape errors in the model's form: ``body.position: ...``."""
    assert isinstance(exc, RequestValidationError)
    if any(tuple(e["loc"]) == ("header", "if-match") for e in exc.errors()):
        try:
            parse_if_match(None)
        except PreconditionRequired as missing:
            return JSONResponse(_error_body(missing), status_code=missing.status)
    errors = [(format_loc(tuple(e["loc"])), str(e["msg"])) for e in exc.errors()]
    return JSONResponse(_error_body(Invalid(errors)), status_code=422)


def create_app(
    authenticator: Authenticator, backend: Backend, traffic: TrafficDatabase | None = None
) -> FastAPI:
    app = FastAPI(
        title="smtpgate",
        summary="Edit the configuration of a running smtpgate (docs/api.md).",
        version="1",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.authenticator = authenticator
    app.state.backend = backend
    app.state.traffic = traffic
    app.add_exception_handler(EditError, _edit_error)
    app.add_exception_handler(RequestValidationError, _request_error)
    app.include_router(router)
    app.include_router(traffic_router, prefix=API_PREFIX, responses=ERRORS)
    return app
