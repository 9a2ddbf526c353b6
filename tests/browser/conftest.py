"""Fixtures for the dashboard tests: a real `tunegate serve` with the tiny model, Debian's headless
Chromium driven by Playwright (never a downloaded browser), pages that fail the test on any
uncaught script error or any request that leaves the server, and a screenshot helper.

Set up with `scripts/install-browser.sh`. Screenshots go to tests/screenshots/ (git-ignored) or to
the folder named by TUNEGATE_SCREENSHOTS.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, tiny_server_env
from tests.server import RunningServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(os.environ.get("TUNEGATE_SCREENSHOTS", ROOT / "tests" / "screenshots"))
# A laptop screen: the dashboard must be readable here without horizontal scrolling.
VIEWPORT = {"width": 1366, "height": 860}


# Module scope: Playwright's sync API keeps an event loop running in this thread until it stops, and
# later tests (asyncio.run) must not find it still running.
@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/install-browser.sh (installs Debian's chromium)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the `playwright` Python package is missing: run scripts/install-browser.sh")
    # axe-core (accessibility checks) ships inside this package; it is part of the same set-up.
    assert importlib.util.find_spec("axe_playwright_python"), (
        "axe-playwright-python is missing: run scripts/install-browser.sh"
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(browser, tmp_path_factory, tiny_model_path):
    """A real server with workers on and the tiny model `tiny`, so a job trains in seconds."""
    data_dir = tmp_path_factory.mktemp("dashboard") / "data"
    # The upload limit: small enough that one test can send a file over it and see the 413 as a message.
    env = tiny_server_env(tiny_model_path, TUNEGATE_TORCH_THREADS="1", TUNEGATE_MAX_UPLOAD_BYTES=str(256 * 1024))
    with RunningServer(data_dir, env) as srv:
        srv.key = srv.create_key("org-dash")
        # The organisation's safety policy, set by its admin: a small gate that reports but never
        # blocks (answers of a random tiny model say nothing about safety), and runtime moderation
        # that flags instead of cutting streams, so these tests are about the dashboard alone.
        admin = srv.create_key("org-dash", admin=True)
        r = httpx.post(
            f"{srv.base_url}/admin/policy",
            headers={"Authorization": f"Bearer {admin}"},
            timeout=60,
            json={
                "gate": {
                    "n_harmful": 4,
                    "n_benign": 2,
                    "max_new_tokens": 8,
                    "harmful_margin": 1,
                    "harmful_cap": 1,
                    "benign_refusal_margin": 1,
                    "category_margin": 1,
                },
                "runtime": {"input": "flag", "output": "flag"},
            },
        )
        assert r.status_code == 200, r.text
        yield srv


class Page:
    """A Playwright page plus the checks every dashboard test wants: no uncaught script errors,
    no request to anywhere but the server under test."""

    def __init__(self, page, server):
        self.page, self.server = page, server
        self.script_errors: list[str] = []
        self.outside_requests: list[str] = []
        page.on("pageerror", lambda exc: self.script_errors.append(str(exc)))
        page.on(
            "console",
            lambda m: (
                self.script_errors.append(m.text)
                if m.type == "error" and "status of 4" not in m.text and "status of 5" not in m.text
                else None
            ),
        )
        page.route("**/*", self._only_server)

    def _only_server(self, route):
        url = route.request.url
        if url.startswith((self.server.url + "/", "data:", "blob:")):
            route.continue_()
        else:
            self.outside_requests.append(url)
            route.abort()

    def sign_in(self, key: str) -> None:
        self.page.goto(self.server.url + "/")
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.get_by_role("navigation", name="Main").wait_for()

    def check_accessibility(self) -> None:
        """axe-core's serious and critical findings (labels, roles, contrast, focus) on the page as it is now."""
        from axe_playwright_python.sync_playwright import Axe

        violations = Axe().run(self.page).response["violations"]
        bad = [
            f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
            for v in violations
            if v["impact"] in ("serious", "critical")
        ]
        assert not bad, f"accessibility problems on {self.page.url}:\n" + "\n".join(bad)

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture()
def ui(browser, server):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(30_000)
    wrapper = Page(context.new_page(), server)
    yield wrapper
    context.close()
    assert not wrapper.outside_requests, f"the dashboard tried to reach outside the server: {wrapper.outside_requests}"
    assert not wrapper.script_errors, f"uncaught script errors on the page: {wrapper.script_errors}"
