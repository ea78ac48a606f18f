"""What the browser pages need of the console (issue 9 item 1): a login that sets a
``Secure; HttpOnly; SameSite=Strict`` session cookie, CSRF protection on every change
made with that cookie (Basic and token clients unchanged), logout, a strict
Content-Security-Policy on every answer, the pages under ``/console/``, and the dry
run and whole-list rule save of the action editor."""

from __future__ import annotations

import httpx

from tests.api.helpers import ConsoleUnderTest

SESSION = "/api/v1/session"
COOKIE = "__Host-smtpgate-session"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
CSRF_REFUSED = {
    "detail": "a change from the console needs the X-CSRF-Token header of its session "
    "(missing or wrong): reload the page"
}
SESSION_ENDED = {
    "detail": "the console session ended (logged out, idle, expired or password changed): "
    "log in again"
}


class Browser:
    """An HTTPS client that behaves as a page does: a session cookie, and the
    CSRF token and ETag it sends back on changes."""

    def __init__(self, console: ConsoleUnderTest, password: str, name: str = "admin") -> None:
        self.client = console.client()
        self.login = self.client.post(SESSION, json={"name": name, "password": password})
        assert self.login.status_code == 200, self.login.text
        self.cookie = self.login.cookies[COOKIE]
        self.csrf = self.login.json()["csrf_token"]
        self.client.cookies.clear()  # sent by hand below, to see exactly what is sent

    def request(
        self, method: str, path: str, *, csrf: str | None = "", etag: str = "", **kwargs: object
    ) -> httpx.Response:
        headers = {"Cookie": f"{COOKIE}={self.cookie}"}
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf or self.csrf
        if etag:
            headers["If-Match"] = etag
        return self.client.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]

    def etag(self) -> str:
        return self.request("GET", "/api/v1/actions").headers["ETag"]


def test_login_sets_a_secure_httponly_strict_host_only_cookie(console: ConsoleUnderTest) -> None:
    browser = Browser(console, console.admin_password)
    set_cookie = browser.login.headers["Set-Cookie"]
    attributes = [part.strip().lower() for part in set_cookie.split(";")]
    assert attributes[0].startswith(COOKIE.lower() + "=")
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= set(attributes)
    assert not any(a.startswith("domain=") for a in attributes)
    assert browser.login.json()["name"] == "admin"
    assert browser.login.json()["role"] == "admin"
    assert browser.login.json()["csrf_header"] == "X-CSRF-Token"
    # The cookie is all a page has: reading works with it, and the session is there.
    assert browser.request("GET", "/api/v1/whoami").json()["name"] == "admin"
    assert browser.request("GET", SESSION).json()["csrf_token"] == browser.csrf
    assert console.gate.wait_record("console_login")[0]["user"] == "admin"


def test_a_change_with_the_cookie_needs_the_sessions_csrf_token(
    console: ConsoleUnderTest,
) -> None:
    browser = Browser(console, console.admin_password)
    etag = browser.etag()
    clone = "/api/v1/actions/A/clone"
    missing = browser.request("POST", clone, csrf=None, etag=etag)
    assert missing.status_code == 403
    assert missing.json() == CSRF_REFUSED
    wrong = browser.request("POST", clone, csrf="not-the-token", etag=etag)
    assert wrong.status_code == 403
    assert wrong.json() == CSRF_REFUSED
    assert browser.etag() == etag  # nothing was changed
    # Another session's token is wrong too.
    other = Browser(console, console.admin_password)
    assert browser.request("POST", clone, csrf=other.csrf, etag=etag).status_code == 403
    made = browser.request("POST", clone, etag=etag)
    assert made.status_code == 201, made.text
    assert made.json()["name"] == "A.1"


def test_basic_and_token_clients_need_no_csrf_token(console: ConsoleUnderTest) -> None:
    token = console.add_token("deploy")
    with console.admin() as basic, console.client(token=token) as bearer:
        etag = basic.get("/api/v1/actions").headers["ETag"]
        made = basic.post("/api/v1/actions/A/clone", headers={"If-Match": etag})
        assert made.status_code == 201
        etag = made.headers["ETag"]
        assert bearer.post("/api/v1/actions/A/clone", headers={"If-Match": etag}).status_code == 201


def test_logout_ends_the_session_and_clears_the_cookie(console: ConsoleUnderTest) -> None:
    browser = Browser(console, console.admin_password)
    assert browser.request("DELETE", SESSION, csrf=None).status_code == 403
    out = browser.request("DELETE", SESSION)
    assert out.status_code == 204
    assert out.headers["Set-Cookie"].startswith(f'{COOKIE}=""; ')
    assert "max-age=0" in out.headers["Set-Cookie"].lower()
    after = browser.request("GET", "/api/v1/whoami")
    assert after.status_code == 401
    assert after.json() == SESSION_ENDED
    # No Basic challenge: a page's fetch must not make the browser ask for a password.
    assert after.headers["WWW-Authenticate"] == 'Bearer realm="smtpgate"'


def test_a_new_password_ends_the_users_sessions(console: ConsoleUnderTest) -> None:
    console.add_user("alice", "alice-password-1")
    browser = Browser(console, "alice-password-1", name="alice")
    assert browser.request("GET", "/api/v1/whoami").status_code == 200
    result = console.command(
        "admin", "passwd", "alice", "--password-stdin", stdin="another-pass-2\n"
    )
    assert result.returncode == 0, result.stderr
    assert browser.request("GET", "/api/v1/whoami").json() == SESSION_ENDED


def test_login_refusals(console: ConsoleUnderTest) -> None:
    with console.client() as client:
        wrong = client.post(SESSION, json={"name": "admin", "password": "not-it"})
        # A form of another site can post text/plain, never JSON: no login by CSRF.
        form = client.post(
            SESSION,
            content='{"name": "admin", "password": "x"}',
            headers={"Content-Type": "text/plain"},
        )
        no_session = client.get(SESSION)
    assert wrong.status_code == 401
    assert wrong.json() == {"detail": "wrong user name or password"}
    assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="smtpgate"'
    assert "Set-Cookie" not in wrong.headers
    assert console.gate.wait_record("login_failed")[0]["user"] == "admin"
    assert form.status_code == 422
    assert no_session.status_code == 401
    assert no_session.json() == {"detail": "not logged in to the console"}
    assert no_session.headers["WWW-Authenticate"] == 'Bearer realm="smtpgate"'


def test_pages_and_answers_carry_a_strict_content_security_policy(
    console: ConsoleUnderTest,
) -> None:
    with console.client() as client:
        home = client.get("/")
        page = client.get("/console/")
        login = client.get("/console/login.html")
        script = client.get("/console/app.js")
        api = client.get("/api/v1/whoami")
    assert home.status_code == 303
    assert home.headers["Location"] == "/console/"
    assert page.status_code == 200
    assert '<script type="module" src="app.js"></script>' in page.text
    assert script.headers["Content-Type"].startswith("text/javascript")
    for answer in (home, page, login, script, api):
        assert answer.headers["Content-Security-Policy"] == CSP
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["X-Frame-Options"] == "DENY"
    assert api.headers["Cache-Control"] == "no-store"


def test_dry_run_answers_as_the_change_would_and_saves_nothing(
    console: ConsoleUnderTest,
) -> None:
    with console.admin() as client:
        etag = client.get("/api/v1/actions/A").headers["ETag"]
        versions = client.get("/api/v1/versions").json()
        long_domain = "a" * 197 + ".com"
        rules = [{"recipient": "partner.example", "sender_encryption": "required"}]
        bad = client.patch(
            "/api/v1/actions/A?dry_run=true",
            json={"starttls.rules": [*rules, {"recipient": long_domain}]},
            headers={"If-Match": etag},
        )
        good = client.patch(
            "/api/v1/actions/A?dry_run=true",
            json={"starttls.rules": rules, "general.max_recipients": 7},
            headers={"If-Match": etag},
        )
        assert client.get("/api/v1/actions/A").headers["ETag"] == etag
        assert client.get("/api/v1/versions").json() == versions
        saved = client.patch(
            "/api/v1/actions/A",
            json={"starttls.rules": rules, "starttls.require_tls_for_envelope": True},
            headers={"If-Match": etag},
        )
        after = client.get("/api/v1/actions/A/rules").json()
        version_list = client.get("/api/v1/versions").json()
    assert bad.status_code == 422
    assert bad.json()["errors"] == [
        {
            "key": "proxy_actions[1].starttls.rules[2].recipient",
            "reason": "pattern longer than 200 characters",
        }
    ]
    assert good.status_code == 200
    assert good.json()["dry_run"] is True
    assert [r["recipient"] for r in good.json()["rules"]] == ["partner.example"]
    assert good.json()["settings"]["general"]["max_recipients"] == 7
    assert good.headers["ETag"] == etag
    # The rules and the setting in one save: one version.
    assert saved.status_code == 200, saved.text
    assert saved.json()["applied"] is True
    assert [v["user"] for v in version_list if v["user"].startswith("api:")] == [
        "api:admin from 127.0.0.1"
    ]
    assert version_list[-1]["summary"] == (
        "A: set the rules (1 rules); set proxy_actions[1].starttls.require_tls_for_envelope = True"
    )
    assert [(r["recipient"], r["sender_encryption"]) for r in after] == [
        ("partner.example", "required")
    ]
