"""The web console in a real browser (issue 9 item 5): log in, clone the predefined
incoming action, build its rules table with the keyboard and the mouse, see the API's
error on the cell that caused it, save, and watch a real SMTP session through the
proxy behave as the table says; every page screenshotted and checked with axe-core."""

from __future__ import annotations

import re
import smtplib
import ssl
import time

from playwright.sync_api import BrowserContext, Page, expect

from tests.api.helpers import ConsoleUnderTest
from tests.browser.chromium import PageWatch, check_page
from tests.browser.conftest import PREDEFINED_INCOMING
from tests.peers.gate_config import POLICY
from tests.peers.upstream import AiosmtpdUpstream

CLONE = f"{PREDEFINED_INCOMING}.1"
#: 201 characters: one more than a pattern may have.
TOO_LONG = "a" * 197 + ".com"


def log_in(context: BrowserContext, console: ConsoleUnderTest) -> tuple[Page, PageWatch]:
    page = context.new_page()
    watch = PageWatch(page)
    page.goto(f"{console.base_url}/")
    expect(page).to_have_url(f"{console.base_url}/console/login.html")
    check_page(page, "login")
    page.get_by_label("User").fill("admin")
    page.get_by_label("Password").fill(console.admin_password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Proxy actions")).to_be_visible()
    return page, watch


def rule_cell(page: Page, position: int, field: str) -> object:
    return page.locator(f'td[data-key="starttls.rules[{position}].{field}"]')


def add_rule(page: Page, domain: str) -> None:
    """Add, type the destination domain, press Enter."""
    page.get_by_role("button", name="Add", exact=True).click()
    typed = page.locator("input.cell-input")
    expect(typed).to_be_focused()
    page.keyboard.type(domain)
    page.keyboard.press("Enter")


def test_the_scenario_of_issue_9_item_5(
    context: BrowserContext, console: ConsoleUnderTest, upstream: AiosmtpdUpstream
) -> None:
    page, watch = log_in(context, console)
    check_page(page, "actions")
    row = page.locator(f'tr[data-action="{PREDEFINED_INCOMING}"]')
    expect(row).to_contain_text("predefined (locked)")

    # Clone the predefined incoming action: its editor opens on the STARTTLS tab.
    page.get_by_role("button", name=f"Clone {PREDEFINED_INCOMING}", exact=True).click()
    expect(page.get_by_role("heading", name=f"Proxy action {CLONE}")).to_be_visible()
    expect(page.locator("#banner")).to_contain_text(f"Cloned {PREDEFINED_INCOMING} as {CLONE}.")
    expect(page.get_by_role("tab", name="STARTTLS")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_label("Enable STARTTLS for content inspection")).to_be_checked()
    summary = page.get_by_label("Summary of TLS-Server.Standard")
    expect(summary).to_contain_text("TLS 1.2 and later")
    expect(page.get_by_role("button", name="Edit", exact=True)).to_be_disabled()
    envelope = page.get_by_label(
        "Use TLS for the sender, recipient and body when sender encryption is required"
    )
    expect(envelope).to_be_disabled()

    # Two rules, typed and committed with Enter; the defaults of the issue.
    add_rule(page, "partner.example")
    add_rule(page, "legacy.example")
    expect(rule_cell(page, 1, "recipient")).to_have_text("partner.example")
    expect(rule_cell(page, 2, "recipient")).to_have_text("legacy.example")
    expect(rule_cell(page, 1, "sender")).to_have_text("*")
    expect(page.get_by_label("Sender encryption of rule 1")).to_have_value("optional")
    expect(page.get_by_label("Recipient encryption of rule 1")).to_have_value("preferred")
    expect(page.get_by_label("Enabled (rule 2)")).to_be_checked()

    # Both drop-downs of rule 1; the envelope checkbox becomes available with Required.
    page.get_by_label("Sender encryption of rule 1").select_option("required")
    page.get_by_label("Recipient encryption of rule 1").select_option("allowed")
    expect(envelope).to_be_enabled()
    certificate_name = page.get_by_label("Certificate name of rule 1")
    expect(certificate_name).to_have_value("next_hop")
    certificate_name.select_option("recipient_domain")

    # Double-click the sender domain; Escape cancels, Enter keeps.
    page.get_by_role("button", name="Sender domain of rule 2: *; press Enter to change").dblclick()
    page.keyboard.type("ignored.example")
    page.keyboard.press("Escape")
    expect(rule_cell(page, 2, "sender")).to_have_text("*")
    page.get_by_role("button", name="Sender domain of rule 2: *; press Enter to change").press(
        "Enter"
    )
    page.keyboard.press("Control+A")
    page.keyboard.type("*")
    page.keyboard.press("Enter")
    expect(rule_cell(page, 2, "sender")).to_have_text("*")

    # Move rule 2 up; untick Enabled on it (now rule 1).
    page.get_by_role("button", name="Move rule 2 up").click()
    expect(rule_cell(page, 1, "recipient")).to_have_text("legacy.example")
    expect(rule_cell(page, 2, "recipient")).to_have_text("partner.example")
    page.get_by_label("Enabled (rule 1)").uncheck()

    # A 201-character domain: the API's error, on its cell.
    add_rule(page, TOO_LONG)
    error = rule_cell(page, 3, "recipient").locator(".cell-error")
    expect(error).to_have_text("pattern longer than 200 characters")
    expect(rule_cell(page, 3, "recipient").get_by_role("button")).to_have_attribute(
        "aria-invalid", "true"
    )
    check_page(page, "action-editor-cell-error")
    page.get_by_role("button", name="Delete rule 3").click()
    expect(page.locator(".cell-error:visible")).to_have_text([])
    check_page(page, "action-editor-starttls")

    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#banner")).to_contain_text(f"Saved {CLONE} (version")
    with console.admin() as client:
        saved = client.get(f"/api/v1/actions/{CLONE}").json()["rules"]
    assert [(r["recipient"], r["tls_name_from"]) for r in saved] == [
        ("legacy.example", "next_hop"),
        ("partner.example", "recipient_domain"),
    ]
    # The other tabs; General points the policy at the clone.
    page.get_by_role("tab", name="ESMTP").click()
    check_page(page, "action-editor-esmtp")
    page.get_by_role("tab", name="General").click()
    page.get_by_label("Use this action for policy").select_option(POLICY)
    page.get_by_role("button", name="Use for this policy").click()
    expect(page.locator("#banner")).to_have_text(
        f"Policy {POLICY} now uses {CLONE} for new sessions."
    )
    check_page(page, "action-editor-general")

    with console.admin() as api:
        rules = api.get(f"/api/v1/actions/{CLONE}/rules").json()
        assert api.get(f"/api/v1/policies/{POLICY}").json()["proxy_action"] == CLONE
    fields = ("enabled", "sender", "recipient", "sender_encryption", "recipient_encryption")
    assert [tuple(r[f] for f in fields) for r in rules] == [
        (False, "*", "legacy.example", "optional", "preferred"),
        (True, "*", "partner.example", "required", "allowed"),
    ]

    # A real SMTP session through the proxy: mail for partner.example in clear is
    # refused at RCPT TO; the disabled rule decides nothing.
    with smtplib.SMTP("127.0.0.1", console.gate.port(), timeout=10) as client:
        client.ehlo("client.example")
        assert client.mail("alice@sender.example")[0] == 250
        assert client.rcpt("bob@partner.example") == (
            530,
            b"5.7.0 Must issue a STARTTLS command first",
        )
        assert client.rcpt("carol@legacy.example")[0] == 250
        client.data(b"Subject: through the console's rules\r\n\r\nHello.\r\n")
    assert upstream.handler.messages[-1].rcpt_tos == ["carol@legacy.example"]
    # A sender whose mail arrives encrypted: Coverage will suggest requiring it.
    with smtplib.SMTP("127.0.0.1", console.gate.port(), timeout=10) as client:
        client.ehlo("client.example")
        client.starttls(context=unverified_client_context())
        client.ehlo("client.example")
        client.sendmail(
            "dave@tls-sender.example", ["erin@legacy.example"], b"Subject: tls\r\n\r\n."
        )
    wait_for_traffic(console, 2)

    # Traffic: the two transactions, filterable; the chart of TLS versions per leg.
    page.get_by_role("link", name="Traffic").click()
    expect(page.get_by_role("heading", name="Traffic")).to_be_visible()
    rows = page.locator(".records tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("tls-sender.example")
    expect(rows.nth(0)).to_contain_text("TLSv1.3")
    expect(rows.nth(0)).to_contain_text(f"127.0.0.1:{upstream.port}")  # the next hop
    expect(rows.nth(1)).to_contain_text("sender.example")
    expect(rows.nth(1)).to_contain_text("delivered")
    client_chart = page.get_by_role("img", name=re.compile(r"^Client leg \(mail arriving\): "))
    expect(client_chart).to_have_attribute("aria-label", re.compile(r"TLSv1\.3: 1.*none: 1"))
    check_page(page, "traffic")
    page.get_by_label("Domain (sender or recipient)").fill("tls-sender.example")
    page.get_by_role("button", name="Show").click()
    expect(rows).to_have_count(1)
    page.get_by_label("Since").fill("yesterday")
    page.get_by_role("button", name="Show").click()
    expect(page.locator('[data-key="query.since"] .cell-error')).not_to_be_empty()

    # Coverage: tls-sender.example could require TLS; its button creates the rule.
    page.get_by_role("link", name="Coverage").click()
    expect(page.get_by_role("heading", name="Encryption coverage")).to_be_visible()
    suggestion = page.locator('.suggestion[data-domain="tls-sender.example"][data-leg="sender"]')
    expect(suggestion).to_contain_text("require TLS on the client leg")
    check_page(page, "coverage")
    suggestion.get_by_role("button").click()
    expect(page.get_by_role("heading", name=f"Proxy action {CLONE}")).to_be_visible()
    expect(page.locator("#banner")).to_contain_text(
        f"Created rule 3 in {CLONE}: sender encryption required for tls-sender.example."
    )
    expect(rule_cell(page, 3, "sender")).to_have_text("tls-sender.example")
    expect(page.get_by_label("Sender encryption of rule 3")).to_have_value("required")
    assert not watch.problems, watch.problems


def unverified_client_context() -> ssl.SSLContext:
    """The sending client of the scenario does not check the proxy's certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def wait_for_traffic(console: ConsoleUnderTest, count: int) -> None:
    """The traffic store writes in batches off the mail path: wait until it has them."""
    deadline = time.monotonic() + 20
    with console.admin() as api:
        while len(api.get("/api/v1/traffic").json()["records"]) < count:
            assert time.monotonic() < deadline, "the traffic store did not write the records"
            time.sleep(0.2)


def test_pages_beside_the_editor(context: BrowserContext, console: ConsoleUnderTest) -> None:
    page, watch = log_in(context, console)
    base = f"{console.base_url}/console/#"

    page.goto(f"{base}/profiles")
    expect(page.get_by_role("heading", name="TLS profiles")).to_be_visible()
    check_page(page, "profiles")
    page.get_by_role("link", name="TLS-Client.Standard").click()
    expect(page.get_by_label("min version")).to_be_disabled()
    page.get_by_role("button", name="Clone").click()
    expect(page.get_by_role("heading", name="TLS profile TLS-Client.Standard.1")).to_be_visible()
    page.get_by_label("min version").select_option("1.3")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#banner")).to_contain_text("Saved TLS-Client.Standard.1")
    # The API's error on the field that caused it.
    page.get_by_label("pfs").select_option("none")
    page.get_by_role("button", name="Save").click()
    expect(page.locator('[data-key="pfs"] .cell-error')).to_have_text(
        "'none' needs TLS 1.2 or lower, but min_version is '1.3' "
        "(every TLS 1.3 cipher suite is forward-secret)"
    )
    expect(page.get_by_label("pfs")).to_have_attribute("aria-invalid", "true")
    check_page(page, "profile-editor")

    page.goto(f"{base}/certificates")
    expect(page.get_by_role("heading", name="Certificates")).to_be_visible()
    ca_row = page.locator("tr", has=page.get_by_role("rowheader", name="Proxy CA"))
    expect(ca_row).to_contain_text("CN=smtpgate proxy CA")
    expect(ca_row).to_contain_text("days left")
    ca = page.get_by_role("link", name="Download the proxy CA (PEM)")
    with page.expect_download() as download:
        ca.click()
    assert download.value.path().read_text().startswith("-----BEGIN CERTIFICATE-----")
    check_page(page, "certificates")

    page.goto(f"{base}/tester")
    page.get_by_label("Policy or proxy action").select_option(f"policy:{POLICY}")
    page.get_by_label("Sender (address or domain; empty: the null sender)").fill("a@x.example")
    page.get_by_label("Recipients (addresses or domains, separated by commas)").fill(
        "bob@corp.example"
    )
    page.get_by_role("button", name="Test").click()
    with console.admin() as api:
        expected = api.post(
            "/api/v1/rules/test",
            json={"sender": "a@x.example", "recipients": ["bob@corp.example"], "policy": POLICY},
        ).json()["results"][0]
    answer = page.get_by_role("row", name="bob@corp.example")
    expect(answer).to_contain_text(expected["client_leg"])
    expect(answer).to_contain_text(expected["upstream_leg"])
    check_page(page, "policy-tester")

    page.goto(f"{base}/versions")
    expect(page.get_by_role("heading", name="Versions")).to_be_visible()
    version = page.locator("tbody tr").first.get_attribute("data-version")
    page.get_by_role("button", name=f"Diff of version {version}", exact=True).click()
    expect(page.locator("pre.diff")).to_contain_text('min_version = "1.3"')
    check_page(page, "versions")
    older = page.locator("tbody tr").nth(1).get_attribute("data-version")
    page.get_by_role("button", name=f"Roll back to version {older}").click()
    expect(page.locator("#banner")).to_contain_text(f"Rolled back to version {older}")

    # Log out: the session ends, the pages send the browser back to the login.
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{console.base_url}/console/login.html")
    page.goto(f"{base}/actions")
    expect(page).to_have_url(f"{console.base_url}/console/login.html")
    assert not watch.problems, watch.problems


def test_saving_a_predefined_action_offers_a_clone(
    context: BrowserContext, console: ConsoleUnderTest
) -> None:
    page, watch = log_in(context, console)
    page.goto(f"{console.base_url}/console/#/actions/SMTP-Outgoing.Standard")
    expect(page.get_by_text("predefined (locked)")).to_be_visible()
    add_rule(page, "bank.example")
    page.get_by_label("Recipient encryption of rule 1").select_option("required")
    page.get_by_role("button", name="Save", exact=True).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("A predefined action cannot be changed")
    check_page(page, "save-as-clone")
    dialog.get_by_label("Name of the clone (empty: the next free name)").fill("Outgoing.Bank")
    dialog.get_by_role("button", name="Save as a clone").click()
    expect(page.get_by_role("heading", name="Proxy action Outgoing.Bank")).to_be_visible()
    expect(page.locator("#banner")).to_contain_text("Saved Outgoing.Bank")
    with console.admin() as api:
        rules = api.get("/api/v1/actions/Outgoing.Bank/rules").json()
        predefined = api.get("/api/v1/actions/SMTP-Outgoing.Standard/rules").json()
    assert [(r["recipient"], r["recipient_encryption"]) for r in rules] == [
        ("bank.example", "required")
    ]
    assert predefined == []
    assert not watch.problems, watch.problems
