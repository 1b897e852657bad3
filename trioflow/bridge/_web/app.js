// The trioflow viewer: sign in, the live run list, a run's graph, log, resume and cancel.
// Plain ES modules, no build step, nothing from the network but the bridge itself.

import { Bridge, bridgeUrl } from "./conn.js";
import {
  STATUSES, TERMINAL, applyChunk, exampleValue, fieldValue, formKind, formatTime,
  graphNodes, newRunState, resumeSchemaFor, scalarType,
} from "./model.js";

const TOKEN_KEY = "trioflow.token";
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "indent") node.style.marginLeft = `${value * 1.5}rem`; // CSSOM: CSP-safe
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

const json = (value) => JSON.stringify(value, null, 2);

// --- sign in ------------------------------------------------------------------------------

// A token in the fragment (#token=...) goes to sessionStorage and out of the address bar
// and history: the fragment never reached the server, and now it is not on screen either.
export function takeTokenFromFragment() {
  const hash = location.hash.replace(/^#/, "");
  if (!hash.includes("token=")) return null;
  const params = new URLSearchParams(hash.startsWith("/") ? "" : hash);
  const token = params.get("token");
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  return token;
}

let bridge = null;
const app = { access: null, view: null, runView: null, runsView: null, described: new Map() };

function showOnly(id) {
  for (const section of ["signin", "runs", "run"]) $(section).hidden = section !== id;
}

function showSignIn(message = "") {
  showOnly("signin");
  $("signin-message").textContent = message;
  $("signout").hidden = true;
  $("token-input").focus();
}

function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  start(token);
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  if (bridge) bridge.close();
  bridge = null;
  app.access = null;
  document.body.dataset.access = "";
  showSignIn();
}

const STATE_TEXT = {
  connecting: "connecting…",
  open: "connected",
  down: "server down: reconnecting…",
  "bad-token": "wrong token",
  closed: "not connected",
};

function start(token) {
  if (bridge) bridge.close();
  bridge = new Bridge(bridgeUrl(location), token);
  bridge.addEventListener("state", (event) => {
    const { state, access } = event.detail;
    const badge = $("conn-status");
    badge.dataset.state = state;
    badge.textContent = STATE_TEXT[state] || state;
    if (state === "bad-token") {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn("Wrong token: the server refused it (close 4401). Paste the right one.");
      return;
    }
    if (state === "open") {
      app.access = access;
      document.body.dataset.access = access;
      $("access").hidden = false;
      $("access").textContent = access === "control" ? "control" : "read only";
      for (const node of document.querySelectorAll(".control-only")) node.hidden = access !== "control";
      if (app.runView) app.runView.render();
    }
  });
  $("signout").hidden = false;
  route();
  bridge.connect();
}

// --- routing ------------------------------------------------------------------------------

function route() {
  if (!bridge) return;
  const match = location.hash.match(/^#\/run\/(.+)$/);
  if (app.runView) app.runView.close();
  app.runView = null;
  if (match) {
    if (app.runsView) app.runsView.stop();
    showOnly("run");
    app.runView = new RunView(decodeURIComponent(match[1]));
  } else {
    showOnly("runs");
    if (!app.runsView) app.runsView = new RunsView();
    app.runsView.watch();
  }
}

async function describe(workflowId) {
  if (!app.described.has(workflowId)) {
    app.described.set(workflowId, bridge.request("describe", { workflowId }).then((r) => r.workflow || r.graph || r));
  }
  try {
    return await app.described.get(workflowId);
  } catch (err) {
    app.described.delete(workflowId);
    throw err;
  }
}

// --- the run list -------------------------------------------------------------------------

class RunsView {
  constructor() {
    this.runs = new Map();
    const select = $("filter-status");
    for (const status of STATUSES) select.append(el("option", { value: status, text: status }));
    select.addEventListener("change", () => this.watch());
    $("filter-workflow").addEventListener("change", () => this.watch());
    $("start-describe").addEventListener("click", () => this.loadStartForm());
    $("start-form").addEventListener("submit", (event) => this.startRun(event));
  }

  filter() {
    return { workflowId: $("filter-workflow").value.trim(), status: $("filter-status").value };
  }

  watch() {
    this.runs.clear();
    this.render();
    bridge.watchRuns(this.filter(), (run) => this.update(run));
  }

  stop() {
    bridge.unwatchRuns();
  }

  update(run) {
    const known = this.runs.get(run.runId);
    const merged = { ...(known || {}), ...run };
    if (!known && merged.createdAt === undefined && (run.status === "pending" || run.status === "running")) {
      // a run-status of a run the list had not seen: it was created about then
      merged.createdAt = run.updatedAt;
    }
    this.runs.set(run.runId, merged);
    const ids = $("workflow-ids");
    if (run.workflowId && ![...ids.options].some((o) => o.value === run.workflowId)) {
      ids.append(el("option", { value: run.workflowId }));
    }
    this.render();
  }

  render() {
    const { workflowId, status } = this.filter();
    const rows = [...this.runs.values()]
      .filter((r) => (!workflowId || r.workflowId === workflowId) && (!status || r.status === status))
      .sort((a, b) => (b.createdAt || b.updatedAt || 0) - (a.createdAt || a.updatedAt || 0));
    const body = $("run-table").tBodies[0];
    body.replaceChildren(
      ...rows.map((r) =>
        el("tr", { dataset: { runId: r.runId, status: r.status } },
          el("td", { class: "status", dataset: { status: r.status }, text: r.status }),
          el("td", { text: r.workflowId || "" }),
          el("td", {}, el("a", { href: `#/run/${encodeURIComponent(r.runId)}` }, el("code", { text: r.runId }))),
          el("td", { text: formatTime(r.createdAt) }),
          el("td", { text: formatTime(r.updatedAt) }),
        ),
      ),
    );
    $("runs-empty").hidden = rows.length > 0;
  }

  async loadStartForm() {
    const workflowId = $("start-workflow").value.trim();
    $("start-message").textContent = "";
    if (!workflowId) return;
    try {
      const description = await describe(workflowId);
      $("start-fields").replaceChildren(schemaForm("start-input", description.inputSchema));
    } catch (err) {
      $("start-message").textContent = `${workflowId}: ${err.message}`;
    }
  }

  async startRun(event) {
    event.preventDefault();
    const workflowId = $("start-workflow").value.trim();
    $("start-message").textContent = "";
    try {
      const fields = $("start-fields").firstElementChild;
      const inputData = fields ? readSchemaForm(fields) : null;
      const reply = await bridge.request("start", { workflowId, inputData });
      location.hash = `#/run/${encodeURIComponent(reply.runId)}`;
    } catch (err) {
      $("start-message").textContent = err.message;
    }
  }
}

// --- forms from JSON Schema ---------------------------------------------------------------

// A flat object of scalars gets one input per field; anything else a JSON text area
// pre-filled with a value of the schema's shape.
function schemaForm(name, schema) {
  const box = el("div", { class: "schema-form", dataset: { name } });
  box._schema = schema;
  if (formKind(schema) === "fields") {
    box.dataset.kind = "fields";
    const required = new Set(schema.required || []);
    for (const [key, prop] of Object.entries(schema.properties)) {
      const kind = scalarType(prop);
      const id = `${name}-${key}`;
      let input;
      if (kind === "boolean") {
        input = el("input", { type: "checkbox", id, name: key });
        input.checked = Boolean(prop.default);
      } else if (kind === "enum") {
        input = el("select", { id, name: key }, ...prop.enum.map((v) => el("option", { value: String(v), text: String(v) })));
      } else {
        input = el("input", {
          id, name: key, type: kind === "string" ? "text" : "number",
          step: kind === "integer" ? "1" : kind === "number" ? "any" : undefined,
          required: required.has(key),
        });
        if (prop.default !== undefined) input.value = String(prop.default);
      }
      box.append(el("label", { for: id }, `${key}${required.has(key) ? " *" : ""} `, input));
    }
  } else {
    box.dataset.kind = "json";
    const area = el("textarea", { id: `${name}-json`, name: "json", spellcheck: "false" });
    area.value = json(exampleValue(schema));
    box.append(el("label", { for: area.id, text: "JSON" }), area);
  }
  return box;
}

function readSchemaForm(box) {
  if (box.dataset.kind === "json") {
    const text = box.querySelector("textarea").value;
    try {
      return JSON.parse(text);
    } catch (err) {
      throw new Error(`not valid JSON: ${err.message}`);
    }
  }
  const out = {};
  const required = new Set(box._schema.required || []);
  for (const [key, prop] of Object.entries(box._schema.properties)) {
    const input = box.querySelector(`[name="${CSS.escape(key)}"]`);
    if (input.type !== "checkbox" && input.value === "" && !required.has(key)) continue;
    out[key] = fieldValue(key, prop, input.value, input.checked);
  }
  return out;
}

// --- a run --------------------------------------------------------------------------------

class RunView {
  constructor(runId) {
    this.runId = runId;
    this.state = newRunState(runId);
    this.description = null;
    this.collapsed = new Set();
    this.suspendedKey = "";
    this.pending = false;
    $("run-id").textContent = runId;
    $("run-message").textContent = "";
    $("log").tBodies[0].replaceChildren();
    $("graph").replaceChildren();
    $("suspended").hidden = true;
    $("outcome").hidden = true;
    this.onCancel = () => this.cancel();
    $("cancel-btn").addEventListener("click", this.onCancel);
    this.sub = bridge.subscribe(runId, 1, (msg) => this.receive(msg));
    this.render();
  }

  close() {
    $("cancel-btn").removeEventListener("click", this.onCancel);
    this.sub.close();
  }

  receive(msg) {
    if (msg.type === "caught-up") {
      this.state.caughtUp = true;
    } else if (msg.type === "end") {
      this.state.finished = true;
    } else if (msg.type === "error") {
      $("run-message").textContent = `${msg.code}: ${msg.message}`;
    } else if (applyChunk(this.state, msg)) {
      this.appendLog(msg);
      if (this.state.workflowId && !this.description) this.loadDescription();
    }
    this.schedule();
  }

  async loadDescription() {
    this.description = { entries: [], resumeSchemas: {}, loading: true };
    try {
      this.description = await describe(this.state.workflowId);
    } catch (err) {
      this.description = { entries: [], resumeSchemas: {}, error: err.message };
    }
    this.suspendedKey = "";
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.render();
    });
  }

  appendLog(chunk) {
    const body = chunk.type.startsWith("data-") ? chunk.data : chunk.payload;
    const text = body === undefined ? "" : json(body);
    const brief = text.length > 80 ? `${text.replace(/\s+/g, " ").slice(0, 77)}…` : text.replace(/\s+/g, " ");
    const restart = chunk.type === "workflow-start" && chunk.payload && chunk.payload.restart;
    const row = el("tr", { dataset: { seq: chunk.seq, type: chunk.type }, class: restart ? "restart-marker" : undefined },
      el("td", { text: String(chunk.seq) }),
      el("td", { text: restart ? `${chunk.type} (restarted execution)` : chunk.type }),
      el("td", { text: chunk.from || "" }),
      el("td", {}, text ? el("details", { class: "chunk" }, el("summary", {}, el("code", { text: brief })), el("pre", { text })) : ""),
    );
    $("log").tBodies[0].append(row);
  }

  render() {
    const s = this.state;
    const status = $("run-status");
    status.textContent = s.status;
    status.dataset.status = s.status;
    $("run-workflow").textContent = s.workflowId || "…";
    const restarts = s.executions.filter((e) => e.restart).length;
    $("run-executions").textContent = s.executions.length > 1
      ? `${s.executions.length} executions${restarts ? ` (${restarts} restarted after a crash)` : ""}`
      : "";
    $("run-executions").dataset.restarts = String(restarts);
    $("cancel-btn").hidden = app.access !== "control" || s.finished || TERMINAL.has(s.status);
    this.renderGraph();
    this.renderSuspended();
    this.renderOutcome();
  }

  renderGraph() {
    const s = this.state;
    const nodes = this.description ? graphNodes(this.description) : [];
    const known = new Set(nodes.map((n) => n.id));
    for (const id of s.steps.keys()) {
      if (!known.has(id) && !/\[\d+\]/.test(id)) nodes.push({ id, kind: "step", entryType: "step", depth: id.split(".").length - 1 });
    }
    const items = nodes.map((node) => {
      const st = s.steps.get(node.id);
      const stepStatus = st ? st.status : "pending";
      const hidden = [...this.collapsed].some((prefix) => node.id.startsWith(`${prefix}.`));
      const li = el("li", {
        dataset: { stepId: node.id, status: stepStatus, kind: node.kind, entry: node.entryType },
        class: hidden ? "nested-hidden" : undefined,
        indent: node.depth || undefined,
      },
      el("span", { class: "kind", text: node.entryType === "step" ? node.kind : `${node.entryType}${node.kind === "workflow" ? " · workflow" : ""}` }),
      el("code", { text: node.id }),
      el("span", { class: "step-status", dataset: { status: stepStatus }, text: stepStatus }));
      if (node.kind === "workflow") {
        const open = !this.collapsed.has(node.id);
        li.append(el("button", {
          type: "button", class: "toggle", text: open ? "collapse" : "expand",
          onclick: () => { if (open) this.collapsed.add(node.id); else this.collapsed.delete(node.id); this.render(); },
        }));
      }
      if (node.entryType === "foreach" && st && st.total !== null) {
        const pct = st.total ? Math.round((100 * st.completed) / st.total) : 100;
        li.append(
          el("progress", { max: String(st.total || 1), value: String(st.total ? st.completed : 1), dataset: { percent: String(pct) } }),
          el("span", { class: "progress-text", text: `${st.completed}/${st.total} (${pct} %)` }),
        );
      }
      return li;
    });
    $("graph").replaceChildren(...items);
  }

  renderSuspended() {
    const s = this.state;
    const key = JSON.stringify([[...s.suspended.keys()], app.access, Boolean(this.description && !this.description.loading)]);
    if (key === this.suspendedKey) return;
    this.suspendedKey = key;
    const box = $("suspended");
    box.hidden = s.suspended.size === 0;
    const parts = [];
    for (const [stepId, payload] of s.suspended) {
      parts.push(el("h2", {}, "Suspended: ", el("code", { text: stepId })), el("pre", { class: "suspend-payload", text: json(payload) }));
      if (app.access !== "control") continue;
      const schema = resumeSchemaFor(this.description, stepId);
      const fields = schemaForm(`resume-${stepId.replace(/[^\w-]/g, "_")}`, schema);
      const message = el("p", { class: "message", role: "alert" });
      const form = el("form", { class: "resume-form", dataset: { step: stepId } }, fields,
        el("button", { type: "submit", class: "resume-btn", text: "Resume" }), message);
      form.addEventListener("submit", (event) => this.resume(event, stepId, fields, message));
      parts.push(form);
    }
    box.replaceChildren(...parts);
  }

  renderOutcome() {
    const s = this.state;
    const box = $("outcome");
    if (!TERMINAL.has(s.status)) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    box.dataset.status = s.status;
    const value = s.status === "success" ? s.result : s.error;
    box.replaceChildren(
      el("h2", { text: s.status === "success" ? "Result" : `Ended: ${s.status}` }),
      value === undefined ? el("p", { class: "muted", text: "(no value)" }) : el("pre", { text: json(value) }),
    );
  }

  async resume(event, stepId, fields, message) {
    event.preventDefault();
    message.textContent = "";
    const button = event.target.querySelector("button");
    try {
      const resumeData = readSchemaForm(fields);
      button.disabled = true;
      await bridge.request("resume", { runId: this.runId, resumeData, step: stepId });
      // The subscription follows the run on: its next chunks arrive on their own.
    } catch (err) {
      message.textContent = err.message;
      button.disabled = false;
    }
  }

  async cancel() {
    $("run-message").textContent = "";
    try {
      await bridge.request("cancel", { runId: this.runId });
    } catch (err) {
      $("run-message").textContent = err.message;
    }
  }
}

// --- start ---------------------------------------------------------------------------------

function main() {
  takeTokenFromFragment();
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (token) signIn(token);
  });
  $("signout").addEventListener("click", signOut);
  window.addEventListener("hashchange", () => {
    const token = takeTokenFromFragment();
    if (token) start(token);
    else route();
  });
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) start(token);
  else showSignIn();
  document.body.dataset.ready = "1";
}

main();
