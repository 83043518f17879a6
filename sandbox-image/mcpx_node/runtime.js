"use strict";
// What generated TypeScript stubs import as "mcpx-runtime": tool calls through the worker's pipe to the
// supervisor, which forwards them to the controller as the Python stubs' calls are (policy, quotas, audit).

/** A tool call failed; `kind` says how, `message` is the server's (or the controller's) message. */
class ToolError extends Error {
  constructor(message, { server = "", tool = "" } = {}) {
    super(message);
    this.server = server;
    this.tool = tool;
  }
  get name() {
    return this.constructor.name;
  }
}
ToolError.prototype.kind = "tool_error";

// The same kinds, names and meanings as mcpx_runtime.tools.
const SUBCLASSES = {
  ToolNotAllowed: "refused",
  InvalidArguments: "invalid_arguments",
  ToolTimeout: "timeout",
  ServerUnavailable: "unavailable",
  QuotaExceeded: "quota",
  InvalidResult: "invalid_result",
};
const errors = { ToolError };
const byKind = { tool_error: ToolError };
for (const [name, kind] of Object.entries(SUBCLASSES)) {
  errors[name] = { [name]: class extends ToolError {} }[name];
  errors[name].prototype.kind = kind;
  byKind[kind] = errors[name];
}

let request = null;

/** Called once by the worker: how requests reach the controller (a function returning a promise). */
function connect(send) {
  request = send;
}

/** The error a JSON-RPC error reply stands for. */
function errorFromReply(error) {
  if (error === null || typeof error !== "object") return new ToolError(String(error));
  const data = error.data !== null && typeof error.data === "object" ? error.data : {};
  const cls = Object.prototype.hasOwnProperty.call(byKind, data.kind) ? byKind[data.kind] : ToolError;
  return new cls(String(error.message ?? "tool call failed"), {
    server: String(data.server ?? ""),
    tool: String(data.tool ?? ""),
  });
}

function send(method, params) {
  if (request === null) return Promise.reject(new ToolError("tools are only callable inside an mcpx sandbox"));
  return request(method, params);
}

/** Call `tool` of `server` with `args`; rejects with a ToolError (or a subclass) when the call fails. */
function callTool(server, tool, args) {
  const sent = {};
  for (const [key, value] of Object.entries(args ?? {})) {
    if (value !== undefined) sent[key] = value;
  }
  return send("tools/call", { server, tool, arguments: sent });
}

/** Find tools by what they do: best matches first, with TypeScript import paths and signatures. */
function searchTools(query, detail = "description", limit = 10) {
  return send("tools/search", { query, detail, limit, language: "typescript" });
}

module.exports = { ...errors, callTool, connect, errorFromReply, searchTools };
