"""The web viewer in a real browser: headless Chromium driven by Selenium.

Contract: SPEC §5 (the web viewer, subprotocol auth, 4401, allowed_origins) and issue 16
("Tested in a real browser"). Two kinds of tests:

- against the viewer's files served by ``trioflow.bridge._http`` with a *scripted* bridge
  (admission by ``_auth.decide``, ``whoami``, ``watch-runs``, ``describe`` and
  ``subscribe``/``resume`` replaying a recorded demo run): the page's own behaviour;
- against the real ``trioflow.bridge.serve`` (``SERVER_WIRED``): a live run list, resume
  through the form, 4401, origin refusal, kill-and-restart continuity. They are strict
  xfails until the server serves the viewer and speaks whoami/watch-runs/describe; flip
  ``SERVER_WIRED`` when it does.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and
``selenium``; without them these tests fail (set ``TRIOFLOW_SKIP_BROWSER=1`` to skip
locally): CI never skips them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

import trioflow as tf
from trioflow._demo import DEMO_APPROVAL, DEMO_INPUT, demo_workflow
from trioflow.bridge import _auth as auth
from trioflow.bridge import _http as http
from trioflow.bridge._describe import describe

#: Flip to True once bridge/_server.py serves the viewer on its port and implements
#: subprotocol auth (4401), allowed_origins (403), whoami, watch-runs and describe.
SERVER_WIRED = True

needs_server = pytest.mark.xfail(
    not SERVER_WIRED,
    strict=True,
    reason="bridge.serve does not serve the viewer nor speak whoami/watch-runs/describe yet",
)

if os.environ.get("TRIOFLOW_SKIP_BROWSER") == "1":
    pytest.skip("TRIOFLOW_SKIP_BROWSER=1", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT = 20  # seconds: every browser wait fits well inside
CONTROL = "c-tok"
READ = "r-tok"
TOKENS = {CONTROL: "control", READ: "read"}
RUN_ID = "run-1"


# --------------------------------------------------------------------------- browser


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    profile = tempfile.mkdtemp(prefix="trioflow-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver") or "")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: webdriver.Chrome, predicate: Callable[[webdriver.Chrome], Any]) -> Any:
    return WebDriverWait(driver, WAIT).until(predicate)


def text_of(driver: webdriver.Chrome, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def log_seqs(driver: webdriver.Chrome) -> list[int]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#log tbody tr")
    return [int(row.get_attribute("data-seq") or 0) for row in rows]


# --------------------------------------------------------------------------- a trio server in a thread


class TrioThread:
    """Runs ``serve(task_status)`` in its own trio loop on a thread until :meth:`stop`."""

    def __init__(self, serve: Callable[..., Awaitable[None]]) -> None:
        self._serve = serve
        self._ready = threading.Event()
        self._scope: trio.CancelScope | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.value: Any = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            trio.run(self._amain)
        except Exception as exc:  # reported by start()
            self.error = exc
            self._ready.set()

    async def _amain(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                self.value = await nursery.start(self._serve)
                self._ready.set()

    def start(self) -> Any:
        self._thread.start()
        self._ready.wait(WAIT)
        if self.error is not None:
            raise self.error
        return self.value

    def stop(self) -> None:
        if self._token is not None and self._scope is not None:
            scope = self._scope
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(scope.cancel, trio_token=self._token)
        self._thread.join(WAIT)


# --------------------------------------------------------------------------- a scripted bridge


def record_demo_run() -> list[dict[str, Any]]:
    """The wire chunks of one demo run: suspended, then resumed to success."""

    async def main() -> list[dict[str, Any]]:
        async with tf.open_runtime() as runtime:
            run = await demo_workflow().create_run(run_id=RUN_ID)
            del runtime
            out = await run.stream(input_data=DEMO_INPUT)
            chunks = [tf.to_wire(c) async for c in out]
            out = await run.resume_stream(resume_data=DEMO_APPROVAL)
            chunks += [tf.to_wire(c) async for c in out]
            return chunks

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


DEMO_CHUNKS = record_demo_run()
SUSPEND_END = next(
    c["seq"]
    for c in DEMO_CHUNKS
    if c["type"] == "workflow-finish" and c["payload"]["workflowStatus"] == "suspended"
)


class ScriptedBridge:
    """The bridge protocol for one recorded run, enough to drive the page: admission as
    ``_auth.decide`` says, then whoami, watch-runs, describe, subscribe, resume, cancel."""

    def __init__(self, *, drop_after: int | None = None) -> None:
        self.port = 0
        self.resumed = trio.Event()
        self.requests: list[dict[str, Any]] = []
        self.drop_after = drop_after  # close the first connection after this seq
        self.connections = 0

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(http.serve, http.StaticSite(), self.on_upgrade)
            task_status.started(self.port)

    async def on_upgrade(self, stream: trio.abc.Stream, head: http.RequestHead) -> None:
        policy = auth.OriginPolicy.build(None, host="127.0.0.1", port=self.port)
        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(nursery, stream)
            decision = auth.decide(
                request.headers, request.proposed_subprotocols, auth.token_roles(TOKENS), policy
            )
            if decision.reject is not None:
                await request.reject(decision.reject)
            else:
                ws = await request.accept(subprotocol=decision.subprotocol)
                if decision.close_code is not None:
                    await ws.aclose(decision.close_code, "wrong token")
                else:
                    self.connections += 1
                    with contextlib.suppress(ConnectionClosed):
                        await self.talk(ws, str(decision.role), first=self.connections == 1)
            nursery.cancel_scope.cancel()

    async def talk(self, ws: WebSocketConnection, role: str, *, first: bool) -> None:
        async def send(message: dict[str, Any]) -> None:
            await ws.send_message(json.dumps(message))

        status = "success" if self.resumed.is_set() else "suspended"
        while True:
            message = json.loads(await ws.get_message())
            self.requests.append(message)
            op, rid = message.get("op"), message.get("id")
            if op == "whoami":
                await send({"type": "reply", "id": rid, "access": role})
            elif op == "watch-runs":
                run = {"runId": RUN_ID, "workflowId": "demo-order", "status": status,
                       "createdAt": 1_700_000_000_000, "updatedAt": 1_700_000_000_500}
                await send({"type": "reply", "id": rid, "runs": [run]})
            elif op == "describe":
                await send({"type": "reply", "id": rid, "workflow": describe(demo_workflow())})
            elif op == "subscribe":
                await send({"type": "reply", "id": rid, "runId": RUN_ID})
                last = len(DEMO_CHUNKS) if self.resumed.is_set() else SUSPEND_END
                if not await self.replay(ws, message["fromSeq"], last, first=first):
                    return
                await send({"type": "caught-up", "runId": RUN_ID, "seq": last})
                if self.resumed.is_set():
                    await send({"type": "end", "runId": RUN_ID, "seq": last})
            elif op == "resume" and role == "control":
                self.resumed.set()
                await send({"type": "reply", "id": rid, "runId": RUN_ID, "status": "running"})
                await self.replay(ws, SUSPEND_END + 1, len(DEMO_CHUNKS), first=False)
                await send({"type": "end", "runId": RUN_ID, "seq": len(DEMO_CHUNKS)})
            else:
                await send({"type": "error", "id": rid, "code": "forbidden", "message": op})

    async def replay(self, ws: WebSocketConnection, from_seq: int, last: int, *, first: bool) -> bool:
        for chunk in DEMO_CHUNKS[from_seq - 1 : last]:
            await ws.send_message(json.dumps(chunk))
            if first and self.drop_after is not None and chunk["seq"] == self.drop_after:
                await ws.aclose(1001, "going away")  # a dropped connection, mid-replay
                return False
        return True


@pytest.fixture
def scripted() -> Iterator[ScriptedBridge]:
    bridge = ScriptedBridge()
    thread = TrioThread(bridge.serve)
    thread.start()
    try:
        yield bridge
    finally:
        thread.stop()


@pytest.fixture
def dropping() -> Iterator[ScriptedBridge]:
    bridge = ScriptedBridge(drop_after=20)
    thread = TrioThread(bridge.serve)
    thread.start()
    try:
        yield bridge
    finally:
        thread.stop()


# --------------------------------------------------------------------------- the page itself


def test_page_loads_and_asks_for_a_token(browser: webdriver.Chrome, scripted: ScriptedBridge) -> None:
    browser.get(f"http://127.0.0.1:{scripted.port}/")
    wait_for(browser, lambda d: d.find_element(By.ID, "signin").is_displayed())
    assert browser.find_element(By.ID, "token-input").get_attribute("type") == "password"
    assert not browser.find_element(By.ID, "runs").is_displayed()
    assert browser.get_cookies() == []


def test_token_fragment_goes_to_session_storage_and_leaves_the_url(
    browser: webdriver.Chrome, scripted: ScriptedBridge
) -> None:
    browser.get(f"http://127.0.0.1:{scripted.port}/#token={CONTROL}")
    wait_for(browser, lambda d: text_of(d, "conn-status") == "connected")
    assert browser.execute_script("return sessionStorage.getItem('trioflow.token')") == CONTROL
    assert CONTROL not in browser.current_url
    assert "#" not in browser.current_url
    assert browser.get_cookies() == []
    assert text_of(browser, "access") == "control"
    # whoami went over the connection the token opened
    assert any(r.get("op") == "whoami" for r in scripted.requests)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'#run-table tr[data-run-id="{RUN_ID}"]'))


def test_pasted_token_signs_in(browser: webdriver.Chrome, scripted: ScriptedBridge) -> None:
    browser.get(f"http://127.0.0.1:{scripted.port}/")
    field = wait_for(browser, lambda d: d.find_element(By.ID, "token-input"))
    field.send_keys(READ)
    browser.find_element(By.CSS_SELECTOR, "#signin-form button").click()
    wait_for(browser, lambda d: text_of(d, "access") == "read only")


def test_wrong_token_says_wrong_token(browser: webdriver.Chrome, scripted: ScriptedBridge) -> None:
    browser.get(f"http://127.0.0.1:{scripted.port}/#token=not-a-token")
    wait_for(browser, lambda d: text_of(d, "conn-status") == "wrong token")
    assert "Wrong token" in text_of(browser, "signin-message")
    assert "server down" not in text_of(browser, "conn-status")
    assert browser.execute_script("return sessionStorage.getItem('trioflow.token')") is None


def test_server_down_is_not_wrong_token(browser: webdriver.Chrome) -> None:
    bridge = ScriptedBridge()
    thread = TrioThread(bridge.serve)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{bridge.port}/#token={CONTROL}")
        wait_for(browser, lambda d: text_of(d, "conn-status") == "connected")
    finally:
        thread.stop()
    wait_for(browser, lambda d: text_of(d, "conn-status") == "server down: reconnecting…")
    assert browser.execute_script("return sessionStorage.getItem('trioflow.token')") == CONTROL
    assert not browser.find_element(By.ID, "signin").is_displayed()


def test_run_page_graph_progress_suspension_and_resume(
    browser: webdriver.Chrome, scripted: ScriptedBridge
) -> None:
    browser.get(f"http://127.0.0.1:{scripted.port}/#token={CONTROL}")
    wait_for(browser, lambda d: text_of(d, "conn-status") == "connected")
    browser.execute_script(f"location.hash = '#/run/{RUN_ID}'")
    wait_for(browser, lambda d: text_of(d, "run-status") == "SUSPENDED")
    pack = wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, '#graph li[data-step-id="pack"]'))
    assert pack.get_attribute("data-entry") == "foreach"
    assert pack.find_element(By.TAG_NAME, "progress").get_attribute("data-percent") == "100"
    assert "8/8" in pack.text
    ids = [li.get_attribute("data-step-id") for li in browser.find_elements(By.CSS_SELECTOR, "#graph li")]
    assert ids == ["check_stock", "price", "plan", "pack", "approve", "ship"]
    approve = browser.find_element(By.CSS_SELECTOR, '#graph li[data-step-id="approve"]')
    assert approve.get_attribute("data-status") == "suspended"
    assert "ship order-42" in text_of(browser, "suspended")
    assert log_seqs(browser) == list(range(1, SUSPEND_END + 1))
    # the resume form is built from the Approval schema: a flat object, one field each
    form = browser.find_element(By.CSS_SELECTOR, 'form.resume-form[data-step="approve"]')
    form.find_element(By.CSS_SELECTOR, 'input[name="approved"]').click()
    by = form.find_element(By.CSS_SELECTOR, 'input[name="by"]')
    assert by.get_attribute("value") == "someone"
    by.clear()
    by.send_keys("browser")
    form.find_element(By.CSS_SELECTOR, "button.resume-btn").click()
    wait_for(browser, lambda d: text_of(d, "run-status") == "SUCCESS")
    resume = next(r for r in scripted.requests if r.get("op") == "resume")
    assert resume["resumeData"] == {"approved": True, "by": "browser"}
    assert resume["step"] == "approve"
    assert log_seqs(browser) == list(range(1, len(DEMO_CHUNKS) + 1))
    assert '"shipped": true' in text_of(browser, "outcome")
    assert "2 executions" in text_of(browser, "run-executions")
    assert not browser.find_element(By.ID, "cancel-btn").is_displayed()


def test_read_token_sees_no_control_buttons(browser: webdriver.Chrome, scripted: ScriptedBridge) -> None:
    browser.get(f"http://127.0.0.1:{scripted.port}/#token={READ}")
    wait_for(browser, lambda d: text_of(d, "access") == "read only")
    assert not browser.find_element(By.ID, "start-panel").is_displayed()
    browser.execute_script(f"location.hash = '#/run/{RUN_ID}'")
    wait_for(browser, lambda d: text_of(d, "run-status") == "SUSPENDED")
    wait_for(browser, lambda d: "ship order-42" in text_of(d, "suspended"))
    assert browser.find_elements(By.CSS_SELECTOR, ".resume-btn") == []
    assert not browser.find_element(By.ID, "cancel-btn").is_displayed()


def test_reconnects_from_the_last_seq_and_shows_nothing_twice(
    browser: webdriver.Chrome, dropping: ScriptedBridge
) -> None:
    browser.get(f"http://127.0.0.1:{dropping.port}/#token={CONTROL}")
    wait_for(browser, lambda d: text_of(d, "conn-status") == "connected")
    browser.execute_script(f"location.hash = '#/run/{RUN_ID}'")
    wait_for(browser, lambda d: text_of(d, "run-status") == "SUSPENDED")
    assert dropping.connections >= 2
    subscribes = [r["fromSeq"] for r in dropping.requests if r.get("op") == "subscribe"]
    assert subscribes[:2] == [1, 21]
    assert log_seqs(browser) == list(range(1, SUSPEND_END + 1))


def test_restarted_execution_is_shown_as_such(browser: webdriver.Chrome, scripted: ScriptedBridge) -> None:
    browser.get(f"http://127.0.0.1:{scripted.port}/#token={READ}")
    wait_for(browser, lambda d: text_of(d, "conn-status") == "connected")
    state = browser.execute_script(
        "const m = await import('./model.js'); const s = m.newRunState('r');"
        "m.applyChunk(s, {type: 'workflow-start', seq: 1, payload: {workflowId: 'w'}});"
        "m.applyChunk(s, {type: 'workflow-step-start', seq: 2, payload: {id: 'a', status: 'running'}});"
        "m.applyChunk(s, {type: 'workflow-start', seq: 3, payload: {workflowId: 'w', restart: true}});"
        "const again = m.applyChunk(s, {type: 'workflow-start', seq: 3, payload: {workflowId: 'w'}});"
        "return {executions: s.executions, a: s.steps.get('a').status, again};"
    )
    assert state["executions"][1]["restart"] is True
    assert state["a"] == "interrupted"
    assert state["again"] is False


# --------------------------------------------------------------------------- the real server


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _assert_serves_viewer(port: int) -> None:
    """Fail at once (not after browser timeouts) when the server does not serve the page."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        conn.settimeout(5)
        head = conn.recv(4096)
    assert head.startswith(b"HTTP/1.1 200 "), head[:100]


class RealServer:
    """``trioflow.bridge.serve`` with the demo workflow on SQLite, in a thread."""

    def __init__(self, db: Path, port: int = 0) -> None:
        self.db = db
        self.port = port
        self.runtime: tf.Runtime | None = None

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with tf.open_runtime(
            storage=tf.SqliteStorage(str(self.db)), workflows=[demo_workflow()]
        ) as runtime:
            self.runtime = runtime
            async with trio.open_nursery() as nursery:
                self.port = await nursery.start(
                    lambda task_status: tf.bridge.serve(
                        runtime, port=self.port, tokens=TOKENS, task_status=task_status
                    )
                )
                await trio.to_thread.run_sync(_assert_serves_viewer, self.port)
                task_status.started(self.port)


@pytest.fixture
def real(tmp_path: Path) -> Iterator[RealServer]:
    server = RealServer(tmp_path / "trioflow.db")
    thread = TrioThread(server.serve)
    thread.start()
    try:
        yield server
    finally:
        thread.stop()


def _start_demo(server: RealServer, port: int) -> str:
    """Start the demo through the bridge's own Python client; its run id."""

    async def main() -> str:
        async with tf.bridge.connect(f"ws://127.0.0.1:{port}", token=CONTROL) as client:
            return str(await client.start("demo-order", DEMO_INPUT))

    return trio.run(main)


@needs_server
def test_live_list_suspension_and_resume_through_the_form(
    browser: webdriver.Chrome, real: RealServer
) -> None:
    browser.get(f"http://127.0.0.1:{real.port}/#token={CONTROL}")
    wait_for(browser, lambda d: text_of(d, "conn-status") == "connected")
    run_id = _start_demo(real, real.port)
    row = wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, f'#run-table tr[data-run-id="{run_id}"]'))
    row.find_element(By.TAG_NAME, "a").click()
    wait_for(browser, lambda d: text_of(d, "run-status") == "SUSPENDED")
    pack = browser.find_element(By.CSS_SELECTOR, '#graph li[data-step-id="pack"]')
    assert pack.find_element(By.TAG_NAME, "progress").get_attribute("data-percent") == "100"
    form = browser.find_element(By.CSS_SELECTOR, 'form.resume-form[data-step="approve"]')
    form.find_element(By.CSS_SELECTOR, 'input[name="approved"]').click()
    form.find_element(By.CSS_SELECTOR, "button.resume-btn").click()
    wait_for(browser, lambda d: text_of(d, "run-status") == "SUCCESS")
    seqs = log_seqs(browser)
    assert seqs == list(range(1, len(seqs) + 1))
    browser.execute_script("location.hash = '#/'")
    wait_for(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, f'#run-table tr[data-run-id="{run_id}"]').get_attribute("data-status") == "success",
    )


@needs_server
def test_real_server_read_token_and_wrong_token(browser: webdriver.Chrome, real: RealServer) -> None:
    browser.get(f"http://127.0.0.1:{real.port}/#token=wrong")
    wait_for(browser, lambda d: text_of(d, "conn-status") == "wrong token")
    browser.get(f"http://127.0.0.1:{real.port}/#token={READ}")
    wait_for(browser, lambda d: text_of(d, "access") == "read only")


FOREIGN_PAGE = """data:text/html,<script>
window.states = [];
const ws = new WebSocket("ws://127.0.0.1:PORT/", ["trioflow.v1", "trioflow.bearer.c-tok"]);
ws.onopen = () => window.states.push("open");
ws.onclose = (e) => window.states.push("close " + e.code);
</script>"""


@needs_server
def test_page_from_another_origin_cannot_connect(browser: webdriver.Chrome, real: RealServer) -> None:
    # A page of another origin (a data: URL: Origin "null") with the right token.
    browser.get(FOREIGN_PAGE.replace("PORT", str(real.port)))
    wait_for(browser, lambda d: d.execute_script("return window.states.length") > 0)
    assert browser.execute_script("return window.states") == ["close 1006"]  # refused: 403


GATED_FLOW = """
import os
import pathlib

import attrs
import trio

import trioflow as tf

MARK = pathlib.Path(os.environ["TRIOFLOW_TEST_GATE"])


async def produce(ctx):
    for i in range(12):
        await ctx.writer.write(i)
    return 12


async def gate(ctx):
    # The first execution blocks here for good (the test kills its process); the
    # restarted one goes through.
    if not MARK.exists():
        MARK.write_text("first execution")
        await trio.sleep_forever()
    return "through"


@attrs.frozen
class Approval:
    approved: bool


async def approve(ctx):
    if ctx.resume_data is None:
        return await ctx.suspend({"question": "ship?"})
    return ctx.resume_data.approved


gated = (
    tf.create_workflow(id="gated")
    .then(tf.create_step(id="produce", execute=produce))
    .then(tf.create_step(id="gate", execute=gate))
    .then(tf.create_step(id="approve", execute=approve, resume_schema=Approval))
)
"""


@needs_server
def test_kill_and_restart_mid_run_loses_and_repeats_nothing(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """``trioflow serve`` on SQLite is killed (SIGKILL) while a step of a run blocks, and
    started again with ``--restart-active``: the page reconnects from its last seq and
    shows every chunk once, through the restarted execution to the suspension."""
    flow = tmp_path / "gated_flow.py"
    flow.write_text(GATED_FLOW)
    mark = tmp_path / "gate-mark"
    port = _free_port()
    env = {
        **os.environ,
        "TRIOFLOW_TOKEN": CONTROL,
        "TRIOFLOW_DB": str(tmp_path / "t.db"),
        "TRIOFLOW_TEST_GATE": str(mark),
    }
    command = [sys.executable, "-m", "trioflow", "serve", f"{flow}:gated",
               "--port", str(port), "--restart-active"]

    def launch() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        process.stdout.readline()  # the "serving ..." line: listening
        return process

    process = launch()
    try:
        _assert_serves_viewer(port)
        browser.get(f"http://127.0.0.1:{port}/#token={CONTROL}")
        wait_for(browser, lambda d: text_of(d, "conn-status") == "connected")

        async def start() -> str:
            async with tf.bridge.connect(f"ws://127.0.0.1:{port}", token=CONTROL) as client:
                return str(await client.start("gated", None))

        run_id = trio.run(start)
        browser.execute_script(f"location.hash = '#/run/{run_id}'")
        # the first execution blocks in "gate": the page shows its step start (seq 16)
        wait_for(browser, lambda d: mark.exists() and max(log_seqs(d), default=0) >= 16)
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
        wait_for(browser, lambda d: text_of(d, "conn-status").startswith("server down"))
        process = launch()
        wait_for(browser, lambda d: text_of(d, "run-status") == "SUSPENDED")
        seqs = log_seqs(browser)
        assert seqs == list(range(1, len(seqs) + 1))  # nothing missing, nothing twice
        starts = browser.find_elements(By.CSS_SELECTOR, '#log tr[data-type="workflow-start"]')
        assert len(starts) == 2  # the first execution and the restarted one
        approve = browser.find_element(By.CSS_SELECTOR, '#graph li[data-step-id="approve"]')
        assert approve.get_attribute("data-status") == "suspended"
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
