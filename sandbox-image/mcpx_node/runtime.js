"use strict";
// What generated TypeScript stubs import as "mcpx-runtime": tool calls on this worker's own connection to the
// controller, as mcpx_runtime/tools.py makes them (the same policy, quotas, audit and errors).

const net = require("net");
const { LineReader } = require("./wire.js");

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

/** This worker's connection to the controller, opened at the first call and again after it was lost. */
class Connection {
  constructor(path, limit) {
    this.path = path;
    this.limit = limit;
    this.socket = null;
    this.nextId = 1;
    this.pending = new Map();
  }

  /** Send a request; the promise settles with its reply, or rejects with a ToolError when it cannot. */
  request(method, params) {
    const id = this.nextId++;
    const frame = Buffer.from(JSON.stringify({ jsonrpc: "2.0", id, method, params }) + "\n");
    if (frame.length > this.limit) {
      const message = `the request is ${frame.length} bytes, over the ${this.limit}-byte frame limit`;
      return Promise.reject(new ToolError(message));
    }
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this._socket().write(frame);
    });
  }

  _socket() {
    if (this.socket !== null) return this.socket;
    const socket = (this.socket = net.createConnection(this.path));
    const inbox = new LineReader(this.limit);
    socket.on("data", (chunk) => {
      let messages;
      try {
        messages = inbox.feed(chunk);
      } catch (error) {
        this._lost(socket, `the connection to the controller failed: ${error.message}`);
        return;
      }
      for (const message of messages) if (message !== null) this._resolve(message);
    });
    socket.on("error", (error) => this._lost(socket, `cannot reach the controller: ${error.message}`));
    socket.on("close", () => this._lost(socket, "the controller closed the connection"));
    return socket;
  }

  _resolve(message) {
    const call = this.pending.get(message.id);
    if (call === undefined) return;
    this.pending.delete(message.id);
    if (message.error != null) call.reject(errorFromReply(message.error));
    else call.resolve(message.result ?? null);
  }

  /** Fail every waiting call; the next one connects again. */
  _lost(socket, reason) {
    if (this.socket !== socket) return;
    this.socket = null;
    socket.destroy();
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const call of pending) call.reject(new ToolError(reason));
  }
}

let connection = null;
let traceparent = "";

/** Called once by the worker: where the controller listens, and the largest frame either side may send. */
function connect(path, limit) {
  connection = new Connection(path, limit);
}

/** Called by the worker for each execution: the W3C trace context its tool calls belong to. */
function trace(context) {
  traceparent = context;
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
  if (connection === null) return Promise.reject(new ToolError("tools are only callable inside an mcpx sandbox"));
  return connection.request(method, params);
}

/** Call `tool` of `server` with `args`; rejects with a ToolError (or a subclass) when the call fails. */
function callTool(server, tool, args) {
  const sent = {};
  for (const [key, value] of Object.entries(args ?? {})) {
    if (value !== undefined) sent[key] = value;
  }
  const params = { server, tool, arguments: sent };
  return send("tools/call", traceparent ? { ...params, _meta: { traceparent } } : params);
}

/** Find tools by what they do: best matches first, with TypeScript import paths and signatures. */
function searchTools(query, detail = "description", limit = 10) {
  return send("tools/search", { query, detail, limit, language: "typescript" });
}

module.exports = { ...errors, callTool, connect, searchTools, trace };
