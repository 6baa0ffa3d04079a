"""The admin page in a real headless Chromium against a real `make run` stack."""

from __future__ import annotations

import base64
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

from tests.deploy.tools import require_module, require_tool
from tests.stack import ROOT, RunningStack, running_stack

T = TypeVar("T")

# The run's screenshot goes to var/ (ignored by git); ORDERFLOW_SCREENSHOT=docs refreshes the committed one.
SCREENSHOT = ROOT / ("docs" if os.environ.get("ORDERFLOW_SCREENSHOT") == "docs" else "var") / "admin-page.png"

# One payment attempt and no retry: a failing payment service makes a dead letter within a second or two.
FAST_DEAD_LETTERS = """
[jobs.payment]
attempt_timeout = 2.0
max_retries = 0
backoff_base = 0.1
backoff_max = 0.2
"""

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,1000",
)


def eventually(probe: Callable[[], T | None], *, timeout: float = 10.0, what: str = "condition") -> T:
    """Polls `probe` until it returns something truthy; the page refreshes on a timer, so state lags a little."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    require_module("selenium", pip_name="selenium==4.51.0")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="orderflow-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
        driver.set_page_load_timeout(15)
        try:
            yield driver
        finally:
            driver.quit()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(tmp_path_factory.mktemp("admin-stack"), policies=FAST_DEAD_LETTERS) as running:
        yield running


def api_flags(stack: RunningStack) -> dict[str, bool]:
    response = requests.get(f"{stack.api}/admin/flags", headers=stack.admin(), timeout=5)
    response.raise_for_status()
    return {f["name"]: f["enabled"] for f in response.json()["flags"]}


def api_circuit_state(stack: RunningStack, name: str) -> str:
    response = requests.get(f"{stack.api}/admin/circuits", headers=stack.admin(), timeout=5)
    response.raise_for_status()
    return next(c["state"] for c in response.json()["circuits"] if c["name"] == name)  # type: ignore[no-any-return]


def api_dead_letters(stack: RunningStack) -> list[dict[str, Any]]:
    response = requests.get(f"{stack.api}/admin/dead-letters", headers=stack.admin(), timeout=5)
    response.raise_for_status()
    return response.json()["items"]  # type: ignore[no-any-return]


def save_whole_page(driver: Any, path: Path) -> None:
    """A PNG of the whole page, not just the window: Chromium renders beyond the viewport on request."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot",
                                  {"format": "png", "captureBeyondViewport": True, "clip": clip})
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG")
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(png)


class AdminPage:
    """What a user of the page sees and clicks, by the page's own labels and data attributes."""

    def __init__(self, driver: Any, base: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver = driver
        self.base = base
        self.by = By

    def open(self) -> None:
        self.driver.get(f"{self.base}/admin/")

    def one(self, css: str) -> Any:
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        return self.driver.find_elements(self.by.CSS_SELECTOR, css)  # type: ignore[no-any-return]

    def shows_login(self) -> bool:
        return bool(self.one("#login").is_displayed() and not self.one("#dashboard").is_displayed())

    def shows_dashboard(self) -> bool:
        return bool(self.one("#dashboard").is_displayed() and not self.one("#login").is_displayed())

    def sign_in(self, token: str) -> None:
        field = self.one("input#token")
        field.clear()
        field.send_keys(token)
        self.one("#sign-in").click()

    def login_message(self) -> str:
        return str(self.one("#login-message").text)

    def flag_switch(self, name: str) -> Any:
        return self.one(f'button[role="switch"][data-flag="{name}"]')

    def circuit_state(self, name: str) -> str:
        return str(self.one(f'[data-state-of="{name}"]').text)

    def circuit_button(self, name: str, action: str) -> Any:
        return self.one(f'button[data-circuit="{name}"][data-action="{action}"]')

    def replay_button(self, dead_letter_id: int) -> Any:
        return self.one(f'button[data-dead-letter="{dead_letter_id}"]')

    def count(self, status: str) -> str:
        return str(self.one(f'[data-count="{status}"]').text)

    def status(self) -> str:
        return str(self.one("#status").text)


def test_the_admin_page_drives_the_admin_api_in_a_real_browser(browser: Any, stack: RunningStack) -> None:
    # `browser` comes first: without Chromium this skips before paying for a stack start.
    page = AdminPage(browser, stack.api)
    page.open()
    assert "OrderFlow admin" in browser.title
    token_field = page.one("input#token")
    assert token_field.get_attribute("type") == "password"
    assert page.one('label[for="token"]').text == "Admin token"
    assert page.shows_login()

    # A wrong token keeps you at the prompt, with a message.
    page.sign_in("not-the-token")
    eventually(lambda: "not accepted" in page.login_message(), what="the rejected-token message")
    assert page.shows_login()

    page.sign_in(stack.admin_token)
    eventually(page.shows_dashboard, what="the dashboard")
    # The token stays in this tab only: session storage, never local storage or a cookie.
    assert browser.execute_script("return sessionStorage.getItem('orderflow.adminToken')") == stack.admin_token
    assert browser.execute_script("return localStorage.length") == 0
    assert browser.get_cookies() == []

    # Flags: the switch turns RealTimePayments off, and the API agrees.
    switch = eventually(lambda: page.all('button[role="switch"][data-flag="RealTimePayments"]'),
                        what="the RealTimePayments switch")[0]
    assert switch.get_attribute("aria-checked") == "true"
    switch.click()
    eventually(lambda: page.flag_switch("RealTimePayments").get_attribute("aria-checked") == "false",
               what="the switch to show off")
    assert api_flags(stack)["RealTimePayments"] is False

    # A dead letter: the payment service fails every call and a job gets no retry.
    requests.put(f"{stack.simulators['payment']}/faults", json={"error_rate": 1}, timeout=5).raise_for_status()
    try:
        created = stack.order()
        assert created.status_code == 201, created.text
        order_id = created.json()["id"]
        letter = eventually(lambda: next((d for d in api_dead_letters(stack) if d["order_id"] == order_id), None),
                            timeout=20, what=f"a dead letter for {order_id}\n{stack.tail()}")
    finally:
        requests.delete(f"{stack.simulators['payment']}/faults", timeout=5).raise_for_status()
    assert stack.get_order(order_id)["status"] == "PaymentFailed"
    replay = eventually(lambda: page.all(f'button[data-dead-letter="{letter["id"]}"]'), what="the dead letter row")[0]
    eventually(lambda: page.count("PaymentFailed") not in ("–", "0"), what="the PaymentFailed count")
    assert replay.is_enabled() and replay.text == "Replay"
    replay.click()
    eventually(lambda: page.replay_button(letter["id"]).text == "Replayed", what="the row to show the replay")
    assert not page.replay_button(letter["id"]).is_enabled()
    assert "replayed" in page.status()
    replayed = next(d for d in api_dead_letters(stack) if d["id"] == letter["id"])
    assert replayed["replayed_at"] is not None
    confirmed = stack.wait_for_status(order_id, "Confirmed", timeout=20)
    assert confirmed["status"] == "Confirmed", stack.tail()
    eventually(lambda: page.count("Confirmed") == "1", what="the Confirmed count")

    # The flag back on through the page.
    page.flag_switch("RealTimePayments").click()
    eventually(lambda: page.flag_switch("RealTimePayments").get_attribute("aria-checked") == "true",
               what="the switch to show on")
    assert api_flags(stack)["RealTimePayments"] is True

    # Circuits: isolate and reset the payment circuit from the page; every process sees it through Redis.
    assert page.circuit_state("payment") == "closed"
    page.circuit_button("payment", "isolate").click()
    eventually(lambda: page.circuit_state("payment") == "isolated", what="the isolated badge")
    assert api_circuit_state(stack, "payment") == "isolated"
    assert not page.circuit_button("payment", "isolate").is_enabled()
    save_whole_page(browser, SCREENSHOT)
    page.circuit_button("payment", "reset").click()
    eventually(lambda: page.circuit_state("payment") == "closed", what="the closed badge")
    assert api_circuit_state(stack, "payment") == "closed"

    # A token the API stops accepting sends the tab back to the prompt on the next refresh.
    browser.execute_script("sessionStorage.setItem('orderflow.adminToken', 'revoked-token')")
    page.open()
    eventually(lambda: page.shows_login() and "not accepted" in page.login_message(), what="the prompt again")
    assert browser.execute_script("return sessionStorage.getItem('orderflow.adminToken')") is None


def test_order_counts_need_the_token(stack: RunningStack) -> None:
    url = f"{stack.api}/admin/orders/summary"
    denied = requests.get(url, timeout=5)
    assert denied.status_code == 401
    assert denied.headers["WWW-Authenticate"].startswith("Bearer")
    counts = requests.get(url, headers=stack.admin(), timeout=5).json()["counts"]
    assert set(counts) == {"PaymentPending", "Confirmed", "PaymentFailed"}
    assert all(isinstance(n, int) for n in counts.values())


def test_the_page_is_served_without_a_token_under_a_strict_policy(stack: RunningStack) -> None:
    response = requests.get(f"{stack.api}/admin/", timeout=5)
    assert response.status_code == 200
    assert "connect-src 'self'" in response.headers["Content-Security-Policy"]
    # No asset from outside the machine: nothing in the page names another host.
    assert "http://" not in response.text and "https://" not in response.text
    assert "localStorage" not in response.text and "document.cookie" not in response.text
