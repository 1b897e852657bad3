// Pure state of the viewer (no DOM): a run's state folded from its wire chunks (SPEC §3.4),
// and forms derived from JSON Schema. Importable from Node for tests.

export const TERMINAL = new Set(["success", "failed", "canceled", "tripwire"]);
export const STATUSES = [
  "pending", "running", "waiting", "suspended", "paused",
  "success", "failed", "canceled", "tripwire",
];

export function newRunState(runId) {
  return {
    runId,
    workflowId: null,
    status: "pending",
    lastSeq: 0,
    steps: new Map(), // step id (dotted for nested) -> StepState
    suspended: new Map(), // step id -> suspend payload
    executions: [], // {seq, restart, resume}
    result: undefined,
    error: undefined,
    finished: false,
    caughtUp: false,
    chunks: 0,
  };
}

function step(state, id) {
  let s = state.steps.get(id);
  if (!s) {
    s = { id, status: "pending", completed: 0, total: null, output: undefined, error: undefined, iterations: 0 };
    state.steps.set(id, s);
  }
  return s;
}

// Fold one chunk into the run state. Returns false for a chunk already folded (seq not
// after the last one), true otherwise.
export function applyChunk(state, chunk) {
  if (typeof chunk.seq === "number") {
    if (chunk.seq <= state.lastSeq) return false;
    state.lastSeq = chunk.seq;
  }
  state.chunks += 1;
  const p = chunk.payload || {};
  switch (chunk.type) {
    case "workflow-start": {
      const resume = state.executions.length > 0 && !p.restart;
      state.executions.push({ seq: chunk.seq, restart: Boolean(p.restart), resume });
      state.workflowId = p.workflowId || state.workflowId;
      state.status = "running";
      state.finished = false;
      state.result = undefined;
      state.error = undefined;
      if (p.restart) {
        // The interrupted attempt's running steps run again.
        for (const s of state.steps.values()) if (s.status === "running") s.status = "interrupted";
      }
      state.suspended.clear();
      break;
    }
    case "workflow-step-start": {
      const s = step(state, p.id);
      s.status = p.status || "running";
      s.output = undefined;
      s.error = undefined;
      if (Array.isArray(p.payload) && s.total === null) s.total = p.payload.length;
      if (p.resumePayload !== undefined) s.resumePayload = p.resumePayload;
      state.suspended.delete(p.id);
      break;
    }
    case "workflow-step-progress": {
      const s = step(state, p.id);
      s.completed = p.completedCount;
      s.total = p.totalCount;
      break;
    }
    case "workflow-step-waiting":
      step(state, p.id).status = "waiting";
      break;
    case "workflow-step-suspended": {
      const s = step(state, p.id);
      s.status = "suspended";
      state.suspended.set(p.id, p.suspendPayload);
      break;
    }
    case "workflow-step-result": {
      const s = step(state, p.id);
      s.status = p.status;
      s.output = p.output;
      s.error = p.error;
      s.iterations += 1;
      // A workflow's result is its last top-level step's output (when the finish chunk
      // does not carry it).
      if (!p.id.includes(".")) state.lastTopOutput = p.output;
      if (s.total !== null && p.status === "success") s.completed = s.total;
      break;
    }
    case "workflow-canceled":
      state.status = "canceled";
      break;
    case "workflow-paused":
      state.status = "paused";
      break;
    case "workflow-finish": {
      state.status = p.workflowStatus;
      if (TERMINAL.has(p.workflowStatus)) state.finished = true;
      if (p.workflowStatus === "success") {
        const fr = p.finalWorkflowResult;
        state.result = fr && typeof fr === "object" && "result" in fr ? fr.result : fr;
        if (state.result === undefined) state.result = state.lastTopOutput;
      }
      if (p.workflowStatus === "failed" || p.workflowStatus === "tripwire") {
        state.error = (p.metadata && (p.metadata.error || p.metadata)) || p.tripwire || "failed";
      }
      break;
    }
    default:
      break;
  }
  return true;
}

// The graph's steps in order with their nesting, from a describe reply.
export function graphNodes(description) {
  const out = [];
  const walk = (entries, depth) => {
    for (const entry of entries || []) {
      const nodes = entry.nodes || (entry.node ? [entry.node] : []);
      if (!nodes.length) {
        out.push({ id: entry.id, kind: entry.type, entryType: entry.type, depth });
        continue;
      }
      for (const node of nodes) {
        out.push({ id: node.id, kind: node.kind, entryType: entry.type, depth });
        if (node.kind === "workflow") walk(node.entries, depth + 1);
      }
    }
  };
  walk(description.entries, 0);
  return out;
}

// The resume schema for a suspended step id (a foreach iteration path "pack[2]" uses its
// step's schema).
export function resumeSchemaFor(description, stepId) {
  const schemas = (description && description.resumeSchemas) || {};
  if (schemas[stepId]) return schemas[stepId];
  const plain = stepId.replace(/\[\d+\]/g, "");
  return schemas[plain] || null;
}

// How to edit values of a schema: "fields" (a flat object of scalars: one input each) or
// "json" (a JSON text area, pre-filled).
export function formKind(schema) {
  if (!schema || schema.type !== "object" || !schema.properties) return "json";
  for (const prop of Object.values(schema.properties)) {
    if (!scalarType(prop)) return "json";
  }
  return "fields";
}

export function scalarType(prop) {
  if (!prop) return null;
  if (Array.isArray(prop.enum)) return "enum";
  const t = Array.isArray(prop.type) ? prop.type.filter((x) => x !== "null") : [prop.type];
  if (t.length !== 1) return null;
  return ["string", "integer", "number", "boolean"].includes(t[0]) ? t[0] : null;
}

// A value that fits a schema, to pre-fill a JSON editor.
export function exampleValue(schema, depth = 0) {
  if (!schema || depth > 8) return null;
  if ("default" in schema) return schema.default;
  if (Array.isArray(schema.enum)) return schema.enum[0];
  if (schema.anyOf) return exampleValue(schema.anyOf[0], depth + 1);
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  switch (type) {
    case "object": {
      const out = {};
      for (const [key, prop] of Object.entries(schema.properties || {})) {
        out[key] = exampleValue(prop, depth + 1);
      }
      return out;
    }
    case "array":
      return schema.prefixItems ? schema.prefixItems.map((s) => exampleValue(s, depth + 1)) : [];
    case "string":
      return "";
    case "integer":
    case "number":
      return 0;
    case "boolean":
      return false;
    default:
      return null;
  }
}

// Convert a field's text to the schema's type; throws Error naming the field.
export function fieldValue(name, prop, raw, checked) {
  const kind = scalarType(prop);
  if (kind === "boolean") return Boolean(checked);
  if (kind === "integer" || kind === "number") {
    if (raw.trim() === "") throw new Error(`${name}: a number is required`);
    const n = Number(raw);
    if (!Number.isFinite(n) || (kind === "integer" && !Number.isInteger(n))) {
      throw new Error(`${name}: expected ${kind === "integer" ? "an integer" : "a number"}, got ${JSON.stringify(raw)}`);
    }
    return n;
  }
  if (kind === "enum") {
    const found = prop.enum.find((v) => String(v) === raw);
    return found === undefined ? raw : found;
  }
  return raw;
}

export function formatTime(ms) {
  if (typeof ms !== "number") return "";
  const d = new Date(ms);
  return d.toLocaleString();
}
