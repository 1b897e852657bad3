// The bridge connection: one WebSocket, requests with ids, subscriptions that resume from
// their last seq after a dropped connection, and a live run list (watch-runs).
//
// The token goes as a subprotocol (browsers cannot set an Authorization header):
// ["trioflow.v1", "trioflow.bearer.<token>"]. The server selects "trioflow.v1" and, for a
// wrong token, closes with 4401 right after the handshake: that is "wrong token", and the
// connection is not retried. Any other close is "server down": retried with back-off.

export const SUBPROTOCOL = "trioflow.v1";
export const BEARER_PREFIX = "trioflow.bearer.";
export const CLOSE_BAD_TOKEN = 4401;

const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 5000;

export class RequestError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

// state: "connecting" | "open" | "down" | "bad-token" | "closed"
export class Bridge extends EventTarget {
  constructor(url, token) {
    super();
    this.url = url;
    this.token = token;
    this.state = "closed";
    this.access = null;
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject}
    this._subs = new Map(); // runId -> Subscription
    this._watch = null; // {filter, onRun}
    this._retryMs = RETRY_MIN_MS;
    this._retryTimer = null;
    this._stopped = false;
  }

  connect() {
    this._stopped = false;
    this._open();
  }

  close() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    if (this._ws) this._ws.close(1000, "bye");
    this._setState("closed");
  }

  _setState(state, detail = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, ...detail } }));
  }

  _open() {
    clearTimeout(this._retryTimer);
    this._setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url, [SUBPROTOCOL, BEARER_PREFIX + this.token]);
    } catch (err) {
      if (err.name === "SyntaxError") {
        // a token with characters a subprotocol cannot carry: it cannot be right
        this._setState("bad-token", { reason: String(err) });
        return;
      }
      this._setState("down", { reason: String(err), retryMs: this._retryMs });
      this._retryTimer = setTimeout(() => this._open(), this._retryMs);
      this._retryMs = Math.min(RETRY_MAX_MS, this._retryMs * 2);
      return;
    }
    this._ws = ws;
    ws.onopen = () => this._onOpen(ws);
    ws.onmessage = (event) => this._onMessage(event.data);
    ws.onclose = (event) => this._onClose(ws, event);
  }

  async _onOpen(ws) {
    if (ws !== this._ws) return;
    // The handshake of a wrong token completes too: only whoami's reply proves the token.
    let reply;
    try {
      reply = await this.request("whoami");
    } catch (err) {
      return; // the close handler reports why
    }
    if (ws !== this._ws) return;
    this.access = reply.access;
    this._retryMs = RETRY_MIN_MS;
    this._setState("open", { access: this.access });
    for (const sub of this._subs.values()) sub._resubscribe();
    if (this._watch) this._sendWatch();
  }

  _onClose(ws, event) {
    if (ws !== this._ws) return;
    this._ws = null;
    for (const { reject } of this._pending.values()) {
      reject(new RequestError("closed", "the connection closed"));
    }
    this._pending.clear();
    if (event.code === CLOSE_BAD_TOKEN) {
      this._setState("bad-token", { reason: event.reason });
      return;
    }
    if (this._stopped) return;
    this._setState("down", { code: event.code, retryMs: this._retryMs });
    this._retryTimer = setTimeout(() => this._open(), this._retryMs);
    this._retryMs = Math.min(RETRY_MAX_MS, this._retryMs * 2);
  }

  _onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (err) {
      return;
    }
    if (msg === null || typeof msg.type !== "string") return;
    if (msg.type === "reply" || (msg.type === "error" && msg.id !== null && msg.id !== undefined)) {
      const pending = this._pending.get(msg.id);
      if (pending) {
        this._pending.delete(msg.id);
        if (msg.type === "reply") pending.resolve(msg);
        else pending.reject(new RequestError(msg.code, msg.message));
        return;
      }
    }
    if (msg.type === "run-status") {
      if (this._watch) this._watch.onRun(msg);
      return;
    }
    const sub = msg.runId !== undefined ? this._subs.get(msg.runId) : undefined;
    if (sub) sub._receive(msg);
    else if (msg.type === "error") {
      this.dispatchEvent(new CustomEvent("server-error", { detail: msg }));
    }
  }

  send(message) {
    if (!this._ws || this._ws.readyState !== WebSocket.OPEN) {
      throw new RequestError("closed", "not connected");
    }
    this._ws.send(JSON.stringify(message));
  }

  // A request with an id; resolves with the reply, rejects with a RequestError.
  request(op, fields = {}) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      try {
        this.send({ op, id, ...fields });
      } catch (err) {
        reject(err);
        return;
      }
      this._pending.set(id, { resolve, reject });
    });
  }

  // Follow a run's chunks from fromSeq on. onMessage(msg) gets each chunk exactly once
  // (in seq order, across reconnects) and the caught-up / end markers.
  subscribe(runId, fromSeq, onMessage) {
    const existing = this._subs.get(runId);
    if (existing) existing.close();
    const sub = new Subscription(this, runId, fromSeq, onMessage);
    this._subs.set(runId, sub);
    if (this.state === "open") sub._resubscribe();
    return sub;
  }

  // The live run list: onRun({runId, workflowId, status, createdAt?, updatedAt}) for each
  // current run and then each status change.
  watchRuns(filter, onRun) {
    this._watch = { filter, onRun };
    if (this.state === "open") this._sendWatch();
  }

  unwatchRuns() {
    this._watch = null;
    if (this.state === "open") this.request("unwatch-runs").catch(() => {});
  }

  async _sendWatch() {
    const watch = this._watch;
    const fields = {};
    if (watch.filter.workflowId) fields.workflowId = watch.filter.workflowId;
    if (watch.filter.status) fields.status = watch.filter.status;
    try {
      const reply = await this.request("watch-runs", fields);
      if (this._watch !== watch) return;
      for (const run of reply.runs || []) watch.onRun(run);
    } catch (err) {
      this.dispatchEvent(new CustomEvent("server-error", { detail: err }));
    }
  }
}

export class Subscription {
  constructor(bridge, runId, fromSeq, onMessage) {
    this.bridge = bridge;
    this.runId = runId;
    this.lastSeq = fromSeq - 1;
    this.onMessage = onMessage;
    this.closed = false;
    this.ended = false;
  }

  _resubscribe() {
    if (this.closed || this.ended) return;
    this.bridge
      .request("subscribe", { runId: this.runId, fromSeq: this.lastSeq + 1 })
      .catch((err) => {
        if (err.code !== "closed") this.onMessage({ type: "error", runId: this.runId, code: err.code, message: err.message });
      });
  }

  _receive(msg) {
    if (this.closed) return;
    if (msg.type === "lagged") {
      // The server dropped us (we read too slowly): pick up after the last chunk we have.
      this._resubscribe();
      return;
    }
    if (typeof msg.seq === "number" && msg.type !== "caught-up" && msg.type !== "end") {
      if (msg.seq <= this.lastSeq) return; // already shown (a replay after a reconnect)
      this.lastSeq = msg.seq;
    }
    if (msg.type === "end") this.ended = true;
    this.onMessage(msg);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.bridge._subs.get(this.runId) === this) this.bridge._subs.delete(this.runId);
    if (this.bridge.state === "open" && !this.ended) {
      this.bridge.request("unsubscribe", { runId: this.runId }).catch(() => {});
    }
  }
}

// ws:// or wss:// URL of the bridge that served this page (same origin, same port).
export function bridgeUrl(location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/`;
}
