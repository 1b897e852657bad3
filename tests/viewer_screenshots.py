"""Take the web viewer's screenshots shown in docs/bridge.md (not a test):

    python tests/viewer_screenshots.py [OUT_DIR]     # default: docs/img

Headless Chromium (as tests/test_browser.py) against ``trioflow.bridge.serve`` running the
demo workflow on SQLite in a thread. The demo's ``pack`` step is gated so that the first
screenshot shows the foreach half done (deterministically), then the gate opens and the
second shows the run suspended with its resume form.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import trio
from selenium import webdriver
from selenium.webdriver.common.by import By
from test_browser import CONTROL, TOKENS, TrioThread, text_of, wait_for  # the script's dir

import trioflow as tf
import trioflow._demo as demo

HELD = {"tea", "spoon", "tray", "cosy"}  # the last 4 of the demo's 8 items


class GatedDemo:
    def __init__(self, db: Path) -> None:
        self.db = db
        self.gate: trio.Event | None = None
        self.token: trio.lowlevel.TrioToken | None = None

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        self.gate = trio.Event()
        self.token = trio.lowlevel.current_trio_token()
        plain_pack = demo._pack

        async def gated_pack(ctx: tf.StepContext) -> Any:
            if ctx.input_data in HELD:
                assert self.gate is not None
                await self.gate.wait()
            return await plain_pack(ctx)

        demo._pack = gated_pack  # type: ignore[assignment]
        workflow = demo.demo_workflow()
        async with tf.open_runtime(storage=tf.SqliteStorage(str(self.db)), workflows=[workflow]) as rt:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(partial(tf.bridge.serve, rt, port=0, tokens=TOKENS))
                task_status.started(port)

    def open_gate(self) -> None:
        assert self.gate is not None
        trio.from_thread.run_sync(self.gate.set, trio_token=self.token)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="trioflow-shots-"))
    server = GatedDemo(work / "trioflow.db")
    thread = TrioThread(server.serve)
    port = thread.start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--window-size=1280,1100", f"--user-data-dir={work / 'profile'}"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver") or "")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(f"http://127.0.0.1:{port}/#token={CONTROL}")
        wait_for(driver, lambda d: text_of(d, "conn-status") == "connected")

        async def start() -> str:
            async with tf.bridge.connect(f"ws://127.0.0.1:{port}", token=CONTROL) as client:
                return str(await client.start("demo-order", demo.DEMO_INPUT))

        run_id = trio.run(start)
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'#run-table tr[data-run-id="{run_id}"]'))
        driver.save_screenshot(str(out / "viewer-runs.png"))
        driver.execute_script(f"location.hash = '#/run/{run_id}'")
        progress = '#graph li[data-step-id="pack"] progress'
        wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, progress).get_attribute("data-percent") == "50")
        driver.save_screenshot(str(out / "viewer-foreach.png"))
        server.open_gate()
        wait_for(driver, lambda d: text_of(d, "run-status") == "SUSPENDED")
        form = driver.find_element(By.CSS_SELECTOR, 'form.resume-form[data-step="approve"]')
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", form)
        driver.save_screenshot(str(out / "viewer-suspended.png"))
    finally:
        driver.quit()
        thread.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent.parent / "docs" / "img")
