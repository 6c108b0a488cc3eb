"""The Content-Security-Policy in real Chromium: every page an instructor, a student, an administrator
and a visitor opens passes it (no inline script, handler or style is blocked), and the pages' scripts
still work under it: the console's JS renders its controls and sends chat; the recording page's
delete button still asks first; a throttled sign-in shows its page."""
from __future__ import annotations

from typing import Any

import pytest

from .conftest import login_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Recorded from the first script of every document, before any of the page's own.
RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.effectiveDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`);
});
"""


class Watched:
    """A page whose CSP violations and CSP console errors are collected, per URL."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        page.context.add_init_script(RECORD_VIOLATIONS)
        page.on("console", self._console)

    def _console(self, msg: Any) -> None:
        if msg.type == "error" and "Content Security Policy" in msg.text:
            self.problems.append(f"console: {msg.text}")

    def visit(self, path: str) -> Any:
        response = self.page.goto(path)
        assert response.status == 200, f"{path}: {response.status}"
        policy = response.headers.get("content-security-policy", "")
        assert "default-src 'self'" in policy and "script-src 'self'" in policy, f"{path}: CSP {policy!r}"
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        return response

    def check(self, where: str) -> None:
        self.problems += [f"{where}: {v}" for v in self.page.evaluate("window.__csp || []")]


@pytest.fixture
def failed_recording(live_demo) -> Any:
    """A recording row is all the detail page needs (before Playwright starts: its loop shares the thread)."""
    from classroom.models import LiveSession, Recording

    session = LiveSession.objects.create(classroom_id=live_demo["class_id"], status="ended")
    return Recording.objects.create(classroom_id=live_demo["class_id"], session=session, status="failed",
                                    error="The recorder could not start.")


def test_every_page_passes_the_content_security_policy(live_demo, live_server_proc, failed_recording, browser):
    server, demo, recording = live_server_proc, live_demo, failed_recording
    problems: list[str] = []

    # A visitor: the sign-in pages, then a sign-in paused by wrong passwords (the real form, daphne).
    visitor = Watched(browser.new_context(base_url=server.url).new_page())
    for path in ("/accounts/login/", "/admin/login/"):
        visitor.visit(path)
        visitor.check(path)
    visitor.visit("/accounts/login/")
    for _ in range(5):
        visitor.page.fill("input[name=username]", "dev")
        visitor.page.fill("input[name=password]", "not-my-password")
        visitor.page.click("button[type=submit]")
        visitor.page.wait_for_load_state()
    visitor.page.get_by_role("heading", name="Sign-in paused").wait_for()
    assert "Try again in 15 minutes" in visitor.page.inner_text("#login-paused")
    visitor.check("sign-in paused")
    problems += visitor.problems

    # The instructor: dashboard, console (its JS renders the controls and sends chat), class and
    # watch pages, recordings and a recording whose Delete asks first.
    ada = Watched(login_page(browser, server, "ada", "classcast-demo"))
    ada.visit("/")
    ada.check("dashboard")
    ada.visit(demo["urls"]["instructor"])
    ada.page.get_by_role("button", name="Start class").click()
    ada.page.locator("#session-status", has_text="Live").wait_for()
    ada.page.get_by_placeholder("Say something…").fill("hello under a strict policy")
    ada.page.get_by_role("button", name="Send").click()
    ada.page.locator("#chat-log li", has_text="hello under a strict policy").wait_for()
    ada.check("console")
    for name in ("student", "watch"):
        ada.visit(demo["urls"][name])
        ada.page.locator("#session-status", has_text="Live").wait_for()  # the page's JS ran
        ada.check(name)
    ada.visit("/recordings/")
    ada.check("recordings")
    ada.visit(f"/recordings/{recording.pk}/")
    asked: list[str] = []
    ada.page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    ada.page.get_by_role("button", name="Delete").click()
    assert asked == ["Delete this recording and all its files?"]
    ada.check("recording")
    ada.visit(f"/recordings/{recording.pk}/")  # dismissed: still there
    problems += ada.problems

    # A student's class page, and the administrator's admin site.
    ben = Watched(login_page(browser, server, "ben", "classcast-demo"))
    ben.visit(demo["urls"]["student"])
    ben.page.get_by_role("button", name="✋ Raise hand").wait_for()
    ben.check("class")
    problems += ben.problems
    admin = Watched(login_page(browser, server, "admin", "classcast-demo"))
    admin.visit("/admin/")
    admin.page.get_by_role("link", name="Recordings").first.wait_for()
    admin.check("admin")
    admin.visit("/recordings/")
    admin.check("admin recordings")
    problems += admin.problems

    assert problems == [], "\n".join(problems)
