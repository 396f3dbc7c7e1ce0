"""A real stack for the browser tests: broker, Postgres, registry, `conveyor ui` in a
thread, and headless Chromium (Debian's, at /usr/bin/chromium) driven by Playwright.

Playwright never downloads a browser here: it is pointed at the system's executable,
which CI installs when it is missing. A machine without it fails these tests with a
message saying so, rather than skipping them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from conveyor.settings import Settings
from conveyor.ui import server
from conveyor.ui.security import Credentials
from conveyor.ui.state import UiOptions
from tests.worker_helpers import prepare

CHROMIUM = os.environ.get("CONVEYOR_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHROMIUM_PRESENT = Path(CHROMIUM).exists()
DOCS = Path(__file__).resolve().parents[2] / "docs"
#: Fast stream re-reads, so the pages follow changes within a fraction of a second.
TEST_STREAM_INTERVAL = 0.3
AUTH = "operator:s3cret-pass"


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    """One partition unit, topology applied, migrated, with the session's registry."""
    return await prepare(settings.replace(partition_unit=1), schema_registry_url)


def _serve(settings: Settings, options: UiOptions) -> Iterator[str]:
    with server.serving(settings, options, "127.0.0.1", server.free_port(preferred=0)) as url:
        yield url.rstrip("/")


@pytest.fixture
def ui_url(live: Settings) -> Iterator[str]:
    """`conveyor ui` on a free loopback port, without authentication."""
    yield from _serve(live, UiOptions(stream_interval=TEST_STREAM_INTERVAL))


@pytest.fixture
def authed_ui_url(live: Settings) -> Iterator[str]:
    """`conveyor ui --auth operator:s3cret-pass` on a free loopback port."""
    options = UiOptions(
        credentials=Credentials.parse(AUTH, None), stream_interval=TEST_STREAM_INTERVAL
    )
    yield from _serve(live, options)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium from the system, never a downloaded one."""
    if not CHROMIUM_PRESENT:
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium) "
            "or set CONVEYOR_TEST_CHROMIUM"
        )
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


def screenshot_path(name: str) -> str:
    """Where a test writes the screenshot the README shows."""
    DOCS.mkdir(exist_ok=True)
    return str(DOCS / f"ui-{name}.png")
