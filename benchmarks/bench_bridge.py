"""Bridge scenario: chunks of a live run delivered over loopback websockets.

The benchmark process hosts a runtime (`MemoryStorage`) and a `trioflow.bridge` server on a
free loopback port. Each repeat creates a run of a one-step workflow whose step writes
chunks with `await ctx.writer.write(i)`; the subscribers run in **another process** (a
remote subscriber is one) and subscribe before the run starts (so they follow it live, as
the in-process fan-out benchmark's subscribers do); then the run starts. The repeat's time
runs from `run.start()` to the moment the subscriber process reports that every
subscription received its `end` (every chunk up to the terminal `workflow-finish`); it
checks that each subscription got every chunk, in order.

Two kinds of remote subscriber:

- `client`: the package's own `trioflow.bridge.connect` client, one connection per
  subscriber, each chunk turned back into a `tf` chunk by `tf.from_wire` (the figure a
  Python consumer sees);
- `raw`: a minimal subscriber written against the documented protocol with plain sockets:
  it parses websocket frames and `json.loads` each message, nothing more (the figure of the
  server's own delivery capacity, with the cheapest honest consumer).

Scenarios (rows):

- `bridge-1`: 1 remote subscriber, 20,000 writes (--quick: 300). Figures:
  `events_per_s` (client), `raw_events_per_s`, and beside them `in_process_events_per_s`:
  the same run with one in-process `run.observe_stream()` subscriber, in the same process.
  Goal: >= 50,000 events/s.
- `bridge-fanout-100`: 100 remote subscribers of one run, 2,000 writes (--quick: 10
  subscribers, 100 writes). Figures: `deliveries_per_s` (raw subscribers, summed),
  `client_deliveries_per_s` (100 `connect` clients in the subscriber process), and
  `in_process_deliveries_per_s` (100 in-process subscribers). Goal: >= 100,000
  deliveries/s.

Beside them, the raw-trio floor (`floor_events_per_s`, `floor_deliveries_per_s`): a
plain trio TCP server with a hand-written websocket handshake sends the same number of
chunk-shaped JSON text frames (each encoded once, `json.dumps` + framing, written in 64 KiB
batches) to the same raw subscriber process: what delivering that many messages from trio
costs with no engine and no bridge at all. `ratio_to_floor` is floor rate / bridge rate.

The machine has 2 cores: the server process (which also executes the run) and the
subscriber process each get about one.

`bridge-1` also reports `replay_events_per_s` / `raw_replay_events_per_s`: the same 20,004
chunks delivered from a run that has already finished (the subscriber subscribes when told;
no run executes meanwhile): the bridge's delivery rate without a live producer sharing its
process.

Internal mode: `python bench_bridge.py --subscriber KIND MODE URL RUN_ID N` runs the
subscriber process (prints `ready`, then one JSON line with what it received; MODE
`replay` subscribes only after a line on stdin).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time
from functools import partial
from typing import Any

import _harness
import bench_floor
import trio

import trioflow as tf
import trioflow.bridge as bridge
from trioflow.bridge._protocol import text_frame

SCRIPT = os.path.abspath(__file__)
TOKEN = "bench-token"
EXTRA_CHUNKS = 4  # workflow-start, step start, step result, workflow-finish
SINGLE_WRITES = 20_000
QUICK_SINGLE_WRITES = 300
FANOUT_SUBSCRIBERS = 100
QUICK_FANOUT_SUBSCRIBERS = 10
FANOUT_WRITES = 2_000
QUICK_FANOUT_WRITES = 100
GOAL_EVENTS_PER_S = 50_000.0
GOAL_DELIVERIES_PER_S = 100_000.0


# --------------------------------------------------------------------------- the server side


def build_workflow() -> tf.Workflow:
    return _harness.writer_workflow("bench-bridge")


async def remote_once(
    runtime: tf.Runtime,
    workflow: tf.Workflow,
    url: str,
    kind: str,
    n_writes: int,
    subs: int,
    replay: bool = False,
) -> float:
    """One repeat with a subscriber process: seconds from run start (`replay`: from the
    subscribe of a finished run) to the last `end`."""
    run = await workflow.create_run()
    if replay:
        result = await run.start(input_data=n_writes)
    mode = "replay" if replay else "live"
    command = [sys.executable, SCRIPT, "--subscriber", kind, mode, url, run.run_id, str(subs)]
    proc = await trio.to_thread.run_sync(
        partial(subprocess.Popen, command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    )
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        ready = await trio.to_thread.run_sync(proc.stdout.readline)
        if ready.strip() != "ready":
            raise RuntimeError(f"subscriber process failed to connect: {ready!r}")
        t0 = time.perf_counter()
        if replay:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        else:
            result = await run.start(input_data=n_writes)
        line = await trio.to_thread.run_sync(proc.stdout.readline)
        elapsed = time.perf_counter() - t0
        proc.stdin.close()
        await trio.to_thread.run_sync(proc.wait)
    finally:
        if proc.poll() is None:
            proc.kill()
            with trio.move_on_after(10, shield=True):
                await trio.to_thread.run_sync(proc.wait)
    if result.status != "success":
        raise RuntimeError(f"run ended {result.status}")
    report = json.loads(line)
    expected = list(range(1, n_writes + EXTRA_CHUNKS + 1))
    if (
        report["first_last"] != [[expected[0], expected[-1]]] * subs
        or report["count"] != [len(expected)] * subs
    ):
        raise RuntimeError(f"{kind} subscribers got {report}, expected {len(expected)} each")
    await runtime.delete_run(run.run_id)
    return elapsed


async def time_remote(
    runtime: tf.Runtime,
    workflow: tf.Workflow,
    url: str,
    kind: str,
    n_writes: int,
    subs: int,
    repeats: int,
    replay: bool = False,
) -> float:
    """Median deliveries per second over `repeats` (after one warm-up)."""
    once = partial(remote_once, runtime, workflow, url, kind, n_writes, subs, replay)
    await once()
    samples = [await once() for _ in range(repeats)]
    return (n_writes + EXTRA_CHUNKS) * subs / statistics.median(samples)


async def time_in_process(
    runtime: tf.Runtime, workflow: tf.Workflow, n_writes: int, subs: int, repeats: int
) -> float:
    """The same run with `subs` in-process `observe_stream` subscribers."""
    counts: list[int] = []

    async def once(run: tf.Run) -> None:
        async def subscribe(task_status: Any) -> None:  # noqa: ASYNC114
            async with run.observe_stream() as subscription:
                task_status.started()
                counts.append(sum([1 async for _chunk in subscription]))

        async with trio.open_nursery() as nursery:
            for _ in range(subs):
                await nursery.start(subscribe)
            await run.start(input_data=n_writes)

    async def teardown(run: tf.Run) -> None:
        if counts != [n_writes + EXTRA_CHUNKS] * subs:
            raise RuntimeError(f"in-process subscribers got {counts}")
        counts.clear()
        await runtime.delete_run(run.run_id)

    timing = await _harness.time_async(
        once, repeats=repeats, setup=workflow.create_run, teardown=teardown
    )
    return timing.rate((n_writes + EXTRA_CHUNKS) * subs)[0]


async def main(quick: bool) -> list[dict[str, Any]]:
    repeats = bench_floor.repeat_count(quick, 3)
    single = QUICK_SINGLE_WRITES if quick else SINGLE_WRITES
    fanout_subs = QUICK_FANOUT_SUBSCRIBERS if quick else FANOUT_SUBSCRIBERS
    fanout_writes = QUICK_FANOUT_WRITES if quick else FANOUT_WRITES
    workflow = build_workflow()
    rows: list[dict[str, Any]] = []
    async with tf.open_runtime(workflows=[workflow]) as runtime:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(
                    bridge.serve,
                    runtime,
                    port=0,
                    tokens={TOKEN: "read"},
                    max_subscriptions=10,
                    max_send_buffer=4 * 1024 * 1024,
                )
            )
            url = f"ws://127.0.0.1:{port}"
            remote = partial(time_remote, runtime, workflow, url)

            client_rate = await remote("client", single, 1, repeats)
            raw_rate = await remote("raw", single, 1, repeats)
            client_replay = await remote("client", single, 1, repeats, replay=True)
            raw_replay = await remote("raw", single, 1, repeats, replay=True)
            local_rate = await time_in_process(runtime, workflow, single, 1, repeats)
            floor_single = await floor_rate(single + EXTRA_CHUNKS, 1, repeats)
            rows.append(
                _harness.report(
                    "bridge-1",
                    {
                        "events_per_s": client_rate,
                        "raw_events_per_s": raw_rate,
                        "replay_events_per_s": client_replay,
                        "raw_replay_events_per_s": raw_replay,
                        "in_process_events_per_s": local_rate,
                        "floor_events_per_s": floor_single,
                        "ratio_to_floor": floor_single / client_rate,
                        "goal_events_per_s": GOAL_EVENTS_PER_S,
                        "meets_goal": client_rate >= GOAL_EVENTS_PER_S,
                        "raw_meets_goal": raw_rate >= GOAL_EVENTS_PER_S,
                        "ratio_to_in_process": local_rate / client_rate,
                        "writes": single,
                        "repeats": repeats,
                        "peak_rss_mb": _harness.peak_rss_mb(),
                    },
                )
            )

            raw_fanout = await remote("raw", fanout_writes, fanout_subs, repeats)
            client_fanout = await remote("client", fanout_writes, fanout_subs, repeats)
            local_fanout = await time_in_process(
                runtime, workflow, fanout_writes, fanout_subs, repeats
            )
            floor_fanout = await floor_rate(fanout_writes + EXTRA_CHUNKS, fanout_subs, repeats)
            rows.append(
                _harness.report(
                    "bridge-fanout-100",
                    {
                        "deliveries_per_s": raw_fanout,
                        "client_deliveries_per_s": client_fanout,
                        "in_process_deliveries_per_s": local_fanout,
                        "floor_deliveries_per_s": floor_fanout,
                        "ratio_to_floor": floor_fanout / client_fanout,
                        "goal_deliveries_per_s": GOAL_DELIVERIES_PER_S,
                        "meets_goal": client_fanout >= GOAL_DELIVERIES_PER_S,
                        "raw_meets_goal": raw_fanout >= GOAL_DELIVERIES_PER_S,
                        "ratio_to_in_process": local_fanout / raw_fanout,
                        "subscribers": fanout_subs,
                        "writes": fanout_writes,
                        "repeats": repeats,
                        "peak_rss_mb": _harness.peak_rss_mb(),
                    },
                )
            )
            nursery.cancel_scope.cancel()
    return rows


# --------------------------------------------------------------------------- the raw-trio floor

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
FLOOR_RUN_ID = "floor-run"


def _floor_frame(seq: int) -> bytes:
    message = {
        "type": "workflow-step-output",
        "runId": FLOOR_RUN_ID,
        "from": "USER",
        "seq": seq,
        "payload": {"output": seq, "runId": FLOOR_RUN_ID, "stepName": "writer"},
    }
    return text_frame(json.dumps(message, separators=(",", ":")).encode())


async def _floor_connection(stream: trio.SocketStream, n_frames: int, cache: dict[int, bytes]) -> None:
    """One subscriber of the floor server: handshake, wait for its subscribe, then every
    frame (encoded once for all connections) and an `end`."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        buffer += await stream.receive_some(65536)
    head, _, rest = buffer.partition(b"\r\n\r\n")
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key")
    )
    accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    if not rest:
        await stream.receive_some(65536)  # the subscribe frame
    out = bytearray()
    for seq in range(1, n_frames + 1):
        frame = cache.get(seq)
        if frame is None:
            frame = cache[seq] = _floor_frame(seq)
        out += frame
        if len(out) >= 65536:
            await stream.send_all(out)
            out = bytearray()
    end = json.dumps({"type": "end", "runId": FLOOR_RUN_ID, "seq": n_frames})
    out += text_frame(end.encode())
    await stream.send_all(out)
    with trio.move_on_after(10):
        while await stream.receive_some(65536):
            pass


async def floor_rate(n_frames: int, subs: int, repeats: int) -> float:
    """Median deliveries per second of the floor server to `subs` raw subscribers in
    another process (after one warm-up)."""

    async def once() -> float:
        cache: dict[int, bytes] = {}

        async def handle(stream: trio.SocketStream) -> None:
            await _floor_connection(stream, n_frames, cache)

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            command = [sys.executable, SCRIPT, "--subscriber", "raw", "live",
                       f"ws://127.0.0.1:{port}", FLOOR_RUN_ID, str(subs)]
            proc = await trio.to_thread.run_sync(
                partial(subprocess.Popen, command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )
            try:
                assert proc.stdout is not None
                assert proc.stdin is not None
                await trio.to_thread.run_sync(proc.stdout.readline)  # ready
                t0 = time.perf_counter()
                line = await trio.to_thread.run_sync(proc.stdout.readline)
                elapsed = time.perf_counter() - t0
                proc.stdin.close()
                await trio.to_thread.run_sync(proc.wait)
            finally:
                if proc.poll() is None:
                    proc.kill()
            report = json.loads(line)
            if report["count"] != [n_frames] * subs:
                raise RuntimeError(f"floor subscribers got {report['count']}")
            nursery.cancel_scope.cancel()
        return elapsed

    await once()
    samples = [await once() for _ in range(repeats)]
    return n_frames * subs / statistics.median(samples)


# --------------------------------------------------------------------------- subscribers


async def client_subscribers(url: str, run_id: str, count: int, replay: bool) -> dict[str, Any]:
    """`count` `trioflow.bridge.connect` clients, one subscription each."""
    results: list[tuple[int, int, int]] = []
    subscribed = [0]
    all_subscribed = trio.Event()
    go = trio.Event()

    async def one() -> None:
        async with bridge.connect(url, token=TOKEN) as client:
            subscribed[0] += 1
            if subscribed[0] == count:
                all_subscribed.set()
            if replay:
                await go.wait()
            subscription = client.subscribe(run_id)
            n, first, last = 0, 0, 0
            async for chunk in subscription:
                if not n:
                    first = chunk.seq
                elif chunk.seq != last + 1:
                    raise RuntimeError(f"gap: {last} -> {chunk.seq}")
                n, last = n + 1, chunk.seq
            results.append((n, first, last))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
        await all_subscribed.wait()
        # Let the server answer the subscribes (the run is pending: nothing to miss anyway,
        # the log keeps every chunk) before the run starts.
        await trio.sleep(0.3)
        print("ready", flush=True)
        if replay:
            await trio.to_thread.run_sync(sys.stdin.readline)
            go.set()
    return {
        "count": [r[0] for r in results],
        "first_last": [[r[1], r[2]] for r in results],
    }


def raw_subscribers(url: str, run_id: str, count: int, replay: bool) -> dict[str, Any]:
    """`count` plain-socket websocket connections speaking the documented protocol."""
    host, port = url.removeprefix("ws://").split(":")
    selector = selectors.DefaultSelector()
    states: list[dict[str, Any]] = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            ).encode()
        )
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(65536)
        head, _, rest = buffer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"upgrade refused: {head[:40]!r}")
        state = {"sock": sock, "buf": bytearray(rest), "n": 0, "first": 0, "last": 0, "end": False}
        states.append(state)
        selector.register(sock, selectors.EVENT_READ, state)
    subscribe = _masked_text(json.dumps({"op": "subscribe", "id": 1, "runId": run_id}))
    if not replay:
        for state in states:
            state["sock"].sendall(subscribe)
    print("ready", flush=True)
    if replay:
        sys.stdin.readline()
        for state in states:
            state["sock"].sendall(subscribe)
    open_count = count
    while open_count:
        for key, _ in selector.select():
            state = key.data
            data = state["sock"].recv(1 << 20)
            if not data:
                raise RuntimeError("the server closed a subscriber's connection")
            state["buf"] += data
            for message in _frames(state["buf"]):
                decoded = json.loads(message)
                kind = decoded["type"]
                if kind.startswith("workflow-"):
                    seq = decoded["seq"]
                    if state["n"] and seq != state["last"] + 1:
                        raise RuntimeError(f"gap: {state['last']} -> {seq}")
                    if not state["n"]:
                        state["first"] = seq
                    state["n"] += 1
                    state["last"] = seq
                elif kind == "end":
                    state["end"] = True
            if state["end"]:
                selector.unregister(state["sock"])
                state["sock"].close()
                open_count -= 1
    return {
        "count": [s["n"] for s in states],
        "first_last": [[s["first"], s["last"]] for s in states],
    }


def _masked_text(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    size = len(payload)
    header = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0xFE]) + size.to_bytes(2)
    return header + mask + masked


def _frames(buf: bytearray) -> list[bytes]:
    """Take every complete (unfragmented, unmasked) frame's payload out of `buf`."""
    out: list[bytes] = []
    pos = 0
    end = len(buf)
    while end - pos >= 2:
        size = buf[pos + 1] & 0x7F
        head = 2
        if size == 126:
            if end - pos < 4:
                break
            size, head = int.from_bytes(buf[pos + 2 : pos + 4]), 4
        elif size == 127:
            if end - pos < 10:
                break
            size, head = int.from_bytes(buf[pos + 2 : pos + 10]), 10
        if end - pos < head + size:
            break
        out.append(bytes(buf[pos + head : pos + head + size]))
        pos += head + size
    del buf[:pos]
    return out


def subscriber_main(kind: str, mode: str, url: str, run_id: str, count: int) -> None:
    replay = mode == "replay"
    if kind == "raw":
        report = raw_subscribers(url, run_id, count, replay)
    else:
        report = trio.run(client_subscribers, url, run_id, count, replay)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--subscriber":
        subscriber_main(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
    else:
        _harness.cli(globals())
