"""The comparison page in a real headless browser (Debian's chromium through its chromedriver): it loads from disk and
inside a sandboxed iframe as MLflow's artifact viewer shows it, with no console errors, and the slider, zoom and source
keys change what is drawn (screenshots compared before and after each interaction)."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srcluster.page import ComparePage, Source

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(
        f"no chromium/chromedriver at {CHROMIUM} / {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402  (after the skip above)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


def picture(h: int, w: int, seed: int) -> np.ndarray:
    """Blocky colours: distinct sources look distinct, and 1 : 1 pixels differ from a fitted view."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 256, (h // 8, w // 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)


@pytest.fixture(scope="module")
def page_path(tmp_path_factory) -> Path:
    page = ComparePage("browser test", {"psnr": "higher"})
    for i in range(2):
        hr = picture(640, 576, i)  # larger than one 512 px tile: tiles are placed and loaded lazily
        page.add(f"img{i}", Source("bicubic"), picture(640, 576, 10 + i), {"psnr": 20.0})
        page.add(f"img{i}", Source("lr"), hr[::4, ::4])
        for step in (100, 200):
            page.add(f"img{i}", Source(f"s@{step}", "s", step), picture(640, 576, step + i), {"psnr": step / 10})
        page.add(f"img{i}", Source("hr"), hr)
    return page.write(tmp_path_factory.mktemp("page") / "page.html")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,800",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield browser
    browser.quit()


def screenshot(driver) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")).astype(int)


def settle(driver, seconds: float = 0.4) -> None:
    """Wait for lazily decoded tiles to be drawn (each load schedules one more frame)."""
    time.sleep(seconds)


def errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]


def canvas_region(driver, shot: np.ndarray, window_width: int | None = None) -> np.ndarray:
    """The slider canvas's pixels in a screenshot (`window_width`: the top window's, when inside an iframe at 0, 0)."""
    rect = driver.execute_script("return document.getElementById('slider-canvas').getBoundingClientRect().toJSON()")
    scale = shot.shape[1] / (window_width or driver.execute_script("return window.innerWidth"))
    top, left = int(rect["top"] * scale), int(rect["left"] * scale)
    return shot[top : top + int(rect["height"] * scale), left : left + int(rect["width"] * scale)]


def test_page_loads_from_disk_and_responds(driver, page_path):
    driver.get(page_path.as_uri())
    settle(driver, 1.0)
    assert errors(driver) == []
    assert driver.find_element(By.ID, "label-a").text.startswith("bicubic")
    assert driver.find_element(By.ID, "label-b").text.startswith("s@200")
    metrics_rows = driver.find_elements(By.CSS_SELECTOR, "#metrics tbody tr")
    assert [r.get_attribute("data-source") for r in metrics_rows] == ["bicubic", "lr", "s@100", "s@200", "hr"]
    assert "20.00" in metrics_rows[3].text  # s@200's psnr as given
    before = screenshot(driver)
    assert canvas_region(driver, before).std() > 20  # the pictures were drawn, not an empty canvas

    # drag the slider's divider to the left: more of B shows
    canvas = driver.find_element(By.ID, "slider-canvas")
    width = canvas.size["width"]
    ActionChains(driver).move_to_element_with_offset(canvas, 0, 0).click_and_hold().move_by_offset(
        -width // 4, 0
    ).release().perform()
    settle(driver)
    moved = screenshot(driver)
    assert driver.execute_script("return document.body.dataset.rendered") != "0"
    assert np.abs(moved - before).mean() > 1

    # zoom in with the keyboard: 100 %, then two steps more; pixels are squares from there on
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys("z")
    body.send_keys("+")
    body.send_keys("+")
    settle(driver)
    zoomed = screenshot(driver)
    assert np.abs(zoomed - moved).mean() > 1
    assert driver.find_element(By.ID, "zoom-label").text == "225 %"

    # source keys: 3 shows the third source as B; ] steps on along the timeline; the right arrow: next image
    body.send_keys("3")
    settle(driver)
    assert driver.find_element(By.ID, "label-b").text.startswith("s@100")
    body.send_keys("]")
    settle(driver)
    assert driver.find_element(By.ID, "label-b").text.startswith("s@200")
    body.send_keys(Keys.ARROW_RIGHT)
    settle(driver)
    assert driver.find_element(By.ID, "metrics-image").text == "img1"

    # the grid: one canvas per source, drawn with the shared zoom
    body.send_keys("g")
    settle(driver)
    cells = driver.find_elements(By.CSS_SELECTOR, "#grid-view .cell")
    assert [c.get_attribute("data-source") for c in cells] == ["bicubic", "lr", "s@100", "s@200", "hr"]
    assert errors(driver) == []


def test_page_works_in_a_sandboxed_iframe_like_mlflows_viewer(driver, page_path, tmp_path):
    """MLflow shows an HTML artifact as a blob: URL in <iframe sandbox="allow-scripts">: an opaque origin, no base URL
    for relative paths, storage APIs throw."""
    wrapper = tmp_path / "viewer.html"
    page_text = json.dumps(page_path.read_text()).replace("</", "<\\/")  # inside a <script>: nothing may close it
    wrapper.write_text(
        "<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head><body style='margin:0'>"
        "<iframe id='f' sandbox='allow-scripts' style='width:1100px;height:700px;border:0'></iframe><script>"
        f"const html = {page_text};"
        "document.getElementById('f').src = URL.createObjectURL(new Blob([html], {type: 'text/html'}));"
        "</script></body></html>"
    )
    driver.get(wrapper.as_uri())
    settle(driver, 1.5)
    assert errors(driver) == []
    window_width = driver.execute_script("return window.innerWidth")
    driver.switch_to.frame(driver.find_element(By.ID, "f"))
    try:
        assert driver.find_element(By.ID, "label-b").text.startswith("s@200")
        shot = canvas_region(driver, screenshot(driver), window_width)
        assert shot.std() > 20
    finally:
        driver.switch_to.default_content()
