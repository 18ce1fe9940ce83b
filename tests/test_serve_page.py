"""The page at ``/`` in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium) against a real ``ddpm-serve`` app on loopback: a run streams its frames and ends with the
grid the API returns, an API error shows verbatim, a bearer token typed in is sent, and axe-core finds
no WCAG 2 A/AA violation in either colour scheme (axe-core comes from the npm registry through npm;
that test skips without it).

``DDPM_SCREENSHOTS=1`` also writes docs/serve-page.png and docs/serve-page-error.png.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
pytest.importorskip("selenium", reason="needs selenium (the test extra)")
pytest.importorskip("fastapi", reason="needs the serve extra (fastapi, uvicorn)")
uvicorn = pytest.importorskip("uvicorn", reason="needs the serve extra (fastapi, uvicorn)")
httpx = pytest.importorskip("httpx", reason="needs httpx (the test extra)")

from PIL import Image  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from ddpm.runtime import DDPM  # noqa: E402
from ddpm.serve.app import Settings, create_app  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"
SCREENSHOTS = os.environ.get("DDPM_SCREENSHOTS") == "1"
TOKEN = "x" * 20
WAIT = 60  # seconds: a bound on any run in these tests (each takes about a second)
POLL = 0.05  # seconds between looks at the page
ENDED = ("done", "failed", "cancelled")
AXE = "axe-core@4.14.1"  # pinned: a new release's rules change what passes, not this page
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
SCHEMES = ("light", "dark")


class Served:
    """A uvicorn server for ``app`` on a free loopback port, run in a background thread."""

    def __init__(self, app) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def ddpm() -> DDPM:
    return DDPM.load(provider="cpu")


@pytest.fixture(scope="module")
def server(ddpm) -> str:
    with Served(create_app(ddpm, Settings(max_rows=8, grace=1.0))) as url:
        yield url


@pytest.fixture(scope="module")
def guarded(ddpm) -> str:
    """A server that wants ``Authorization: Bearer <TOKEN>``."""
    with Served(create_app(ddpm, Settings(max_rows=8, grace=1.0, token=TOKEN))) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with the driver's path below, Selenium Manager never downloads anything
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=720,1240",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def fill(browser, **fields: object) -> None:
    """Set each input or select of that id to the value (None: empty) and fire its input event, as
    typing would, in one round trip."""
    browser.execute_script(
        """
        for (const [id, value] of Object.entries(arguments[0])) {
            const element = document.getElementById(id);
            element.value = value === null ? "" : String(value);
            element.dispatchEvent(new Event("input", {bubbles: true}));
        }""",
        fields,
    )


def state(browser) -> str:
    """The page's state: idle, running, done, failed or cancelled."""
    return browser.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def wait_end(browser) -> str:
    """The state the run in the page ends in."""
    WebDriverWait(browser, WAIT, poll_frequency=POLL).until(lambda driver: state(driver) in ENDED)
    return state(browser)


def run(browser, **fields: object) -> str:
    """Fill the form, click Generate and wait for the run to end; its final state."""
    fill(browser, **fields)
    browser.find_element(By.ID, "generate").click()
    return wait_end(browser)


def error_text(browser) -> str:
    return browser.find_element(By.ID, "error").text


def screenshot(browser, name: str) -> None:
    """docs/<name>: the page down to its card's bottom edge, when DDPM_SCREENSHOTS=1."""
    if SCREENSHOTS:
        shot = Image.open(io.BytesIO(browser.get_screenshot_as_png()))
        bottom = browser.execute_script("return document.querySelector('main').getBoundingClientRect().bottom")
        DOCS.mkdir(exist_ok=True)
        shot.crop((0, 0, shot.width, min(shot.height, int(bottom) + 32))).save(DOCS / name)


def check_result(browser, url: str, headers: dict | None = None) -> Image.Image:
    """The shown grid is the API's result for the page's job; the seed and the downloads are shown.
    Returns the API's PNG."""
    job = browser.find_element(By.TAG_NAME, "body").get_attribute("data-job")
    response = httpx.get(f"{url}/v1/jobs/{job}/result", params={"format": "png"}, headers=headers)
    assert response.status_code == 200, response.text
    grid = Image.open(io.BytesIO(response.content))
    image = browser.find_element(By.ID, "image")
    shown = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
    assert shown == list(grid.size)
    assert browser.find_element(By.ID, "seed-used").text == response.headers["X-DDPM-Seed"]
    png = browser.find_element(By.ID, "download-png")
    assert png.is_displayed() and png.get_attribute("href").startswith("blob:")
    assert png.get_attribute("download") == f"ddpm-{response.headers['X-DDPM-Seed']}.png"
    return grid


def test_a_run_streams_frames_and_ends_with_the_apis_grid(browser, server):
    browser.get(server)
    assert run(browser, n=4, steps=10, frames=5) == "done", error_text(browser)
    grid = check_result(browser, server)
    assert grid.size == ((2 * 34 + 2) * 3,) * 2  # 2x2 cells of 32 px and 2 px padding, at the default scale 3
    job = browser.find_element(By.TAG_NAME, "body").get_attribute("data-job")
    view = httpx.get(f"{server}/v1/jobs/{job}").json()
    assert browser.find_element(By.ID, "image").get_attribute("data-frames") == str(view["frames"]) != "0"
    assert int(browser.find_element(By.ID, "progress").get_attribute("value")) == view["steps"] == 10
    gif = browser.find_element(By.ID, "download-gif")
    assert gif.is_displayed() and gif.get_attribute("href").startswith("blob:")
    assert not browser.find_element(By.ID, "error").is_displayed()


def test_chosen_digits_and_seed_are_sent(browser, server):
    browser.get(server)
    assert not browser.find_element(By.ID, "guidance").is_enabled()  # guidance only with digits
    for digit in "37":
        browser.find_element(By.CSS_SELECTOR, f'#digits [data-digit="{digit}"]').click()
    assert browser.find_element(By.ID, "guidance").is_enabled()
    assert run(browser, n=6, steps=5, frames=0, seed=1234, guidance=2) == "done", error_text(browser)
    grid = check_result(browser, server)
    assert grid.size == ((2 * 34 + 2) * 3, (3 * 34 + 2) * 3)  # one column per digit: 2 columns, 3 rows
    assert browser.find_element(By.ID, "seed-used").text == "1234"
    assert not browser.find_element(By.ID, "download-gif").is_displayed()  # no frames, no GIF


def test_an_api_error_shows_verbatim(browser, server):
    expected = httpx.post(f"{server}/v1/jobs", json={"n": 4, "sampler": "ancestral", "steps": 5000})
    assert expected.status_code == 422
    browser.get(server)
    assert run(browser, n=4, sampler="ancestral", steps=5000) == "failed"
    assert (
        error_text(browser)
        == expected.json()["detail"]
        == "steps: must be between 1 and 1000 (the model's T), got 5000"
    )
    assert browser.find_element(By.ID, "error").get_attribute("role") == "alert"
    screenshot(browser, "serve-page-error.png")


def test_cancel_ends_a_long_run(browser, server):
    browser.get(server)
    fill(browser, n=1, sampler="ancestral", steps=1000, frames=0)
    browser.find_element(By.ID, "generate").click()
    progress = lambda driver: int(driver.find_element(By.ID, "progress").get_attribute("value") or 0)  # noqa: E731
    WebDriverWait(browser, WAIT, poll_frequency=POLL).until(lambda driver: progress(driver) > 0)
    browser.find_element(By.ID, "cancel").click()
    assert wait_end(browser) == "cancelled", error_text(browser)
    assert progress(browser) < 1000


def test_a_bearer_token_typed_in_is_sent(browser, guarded):
    browser.get(guarded)
    fill(browser, token=None)
    assert run(browser, n=4, steps=5, frames=2) == "failed"
    assert error_text(browser) == httpx.post(f"{guarded}/v1/jobs", json={"n": 4}).json()["detail"]
    assert "bearer token" in error_text(browser)
    assert run(browser, token=TOKEN) == "done", error_text(browser)
    check_result(browser, guarded, {"Authorization": f"Bearer {TOKEN}"})
    assert browser.execute_script("return sessionStorage.getItem('ddpm-token')") == TOKEN
    browser.refresh()  # the token stays for the tab
    assert browser.find_element(By.ID, "token").get_attribute("value") == TOKEN


@pytest.mark.skipif(not SCREENSHOTS, reason="DDPM_SCREENSHOTS=1 writes the docs' screenshots")
def test_screenshot_of_a_finished_run(browser, server):
    browser.get(server)
    assert run(browser, seed=7) == "done", error_text(browser)  # the page's defaults: 16 digits, 10 UniPC calls
    screenshot(browser, "serve-page.png")


@pytest.fixture(scope="session")
def axe_source(tmp_path_factory) -> str:
    """axe.min.js of AXE, from the npm registry by ``npm pack`` (no install, no lock file)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"needs npm, to fetch {AXE} from the npm registry")
    folder = tmp_path_factory.mktemp("axe")
    try:
        packed = subprocess.run(
            [npm, "pack", AXE, "--json", "--pack-destination", str(folder)],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm pack {AXE} took over 300 s (is the npm registry reachable?)")
    if packed.returncode != 0:
        first = " / ".join(packed.stderr.strip().splitlines()[:4])  # npm's code and reason come first
        pytest.skip(f"npm pack {AXE} failed (is the npm registry reachable?): {first}")
    with tarfile.open(folder / json.loads(packed.stdout)[0]["filename"]) as tar:
        return tar.extractfile("package/axe.min.js").read().decode("utf-8")


def set_scheme(browser, scheme: str | None) -> None:
    """Emulate prefers-color-scheme: light or dark; None: back to the browser's own."""
    features = [] if scheme is None else [{"name": "prefers-color-scheme", "value": scheme}]
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": features})


def axe_violations(browser, axe_source: str) -> list[str]:
    """axe-core's WCAG 2.0/2.1 A and AA violations on the page as it is, one line per element.
    ignoreLength: the contrast of one-character text too (the digit toggles), which axe-core
    otherwise leaves for review instead of failing."""
    if not browser.execute_script("return typeof window.axe === 'object'"):
        browser.execute_script(axe_source)
    found = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        axe.run(document, {runOnly: {type: "tag", values: arguments[0]}, resultTypes: ["violations"],
                           checks: {"color-contrast": {options: {ignoreLength: true}}}})
           .then((result) => done(result.violations), (err) => done(String(err)));""",
        AXE_TAGS,
    )
    assert isinstance(found, list), f"axe-core failed: {found}"
    return [
        f"{rule['id']} at {node['target']}: {node['failureSummary']}".replace("\n", " ")
        for rule in found
        for node in rule["nodes"]
    ]


def test_axe_finds_no_wcag_violation_in_either_colour_scheme(browser, server, axe_source):
    """Each state that shows something new — the page as loaded, a run in flight (Cancel enabled),
    a finished run (a digit pressed, the seed and both download links shown) and a failed one (the
    error) — in both schemes."""
    browser.get(server)
    found: dict[str, list[str]] = {}

    def check(page_state: str) -> None:
        backgrounds = set()
        for scheme in SCHEMES:
            set_scheme(browser, scheme)
            assert browser.execute_script(f"return matchMedia('(prefers-color-scheme: {scheme})').matches")
            backgrounds.add(browser.execute_script("return getComputedStyle(document.body).backgroundColor"))
            found[f"{page_state}, {scheme}"] = axe_violations(browser, axe_source)
        assert len(backgrounds) == len(SCHEMES), "the page looks the same in both schemes"

    try:
        check("loaded")
        fill(browser, n=1, sampler="ancestral", steps=1000, frames=0)  # long enough to look at it running
        browser.find_element(By.ID, "generate").click()
        WebDriverWait(browser, WAIT, poll_frequency=POLL).until(
            lambda driver: driver.find_element(By.ID, "cancel").is_enabled()
        )
        check("running")
        assert state(browser) == "running", "the run ended before the check of its state did"
        browser.find_element(By.ID, "cancel").click()
        assert wait_end(browser) == "cancelled", error_text(browser)
        browser.find_element(By.CSS_SELECTOR, '#digits [data-digit="3"]').click()
        assert run(browser, n=2, sampler="unipc", steps=2, frames=2) == "done", error_text(browser)
        assert browser.find_element(By.ID, "download-gif").is_displayed()
        check("done")
        assert run(browser, steps=5000) == "failed"
        assert browser.find_element(By.ID, "error").is_displayed()
        check("failed")
    finally:
        set_scheme(browser, None)
    assert not any(found.values()), "\n".join(f"{where}: {line}" for where, lines in found.items() for line in lines)
