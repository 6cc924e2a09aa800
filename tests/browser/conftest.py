"""Fixtures for the browser tests: the studio as its own process, and Debian's Chromium through Playwright.

Needs `apt-get install -y chromium` (Playwright's own browser downloads are not used)."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from studio_helpers import StudioProcess  # noqa: E402

CHROMIUM = os.environ.get("LACKER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def studio_app(tmp_path_factory):
    # No Hub token, whatever this machine has stored: Export's push then says what a tokenless user is told.
    no_token = {"HF_TOKEN": "", "HUGGING_FACE_HUB_TOKEN": "", "HF_TOKEN_PATH": str(tmp_path_factory.mktemp("hf") / "token")}
    process = StudioProcess(tmp_path_factory.mktemp("browser") / "runs", env=no_token)
    yield process
    process.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install it with `apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, studio_app):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(studio_app.url)
    page.get_by_role("tab", name="Model").wait_for()
    yield page
    context.close()
