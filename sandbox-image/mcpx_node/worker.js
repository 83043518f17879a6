"use strict";
// The TypeScript worker: the Node.js twin of mcpx_runtime/worker.py, speaking the same pipe protocol.
//
// node worker.js CMD_FD EVT_FD. Commands arrive as JSON lines on CMD_FD ("execute"); events leave as JSON lines
// on EVT_FD ("ready", "done"). fd 1 and 2 are the supervisor's capture pipes. Tool calls go to the controller on a
// connection of this worker's own (runtime.js), not through the supervisor.
// Each cell is transpiled by sucrase (types stripped, imports turned into require) and evaluated by Node's REPL
// evaluator, which gives top-level await and keeps declarations across cells in one global scope.

const fs = require("fs");
const net = require("net");
const path = require("path");
const Module = require("module");
const repl = require("repl");
const stream = require("stream");
const util = require("util");
const { transform } = require("sucrase");
const runtime = require("./runtime.js");
const { LineReader } = require("./wire.js");

const [CMD_FD, EVT_FD] = process.argv.slice(2).map(Number);
const MAX_FRAME = Number(process.env.MCPX_MAX_FRAME || 16 * 1024 * 1024);
// A returned value travels in one frame (JSON may escape a character as six bytes), as in worker.py.
const MAX_RESULT_CHARS = Math.min(Number(process.env.MCPX_MAX_OUTPUT || 4 * 1024 * 1024), Math.floor(MAX_FRAME / 14));
const TOOLS = process.env.MCPX_TOOLS || "/tools";
const RUNTIME = require.resolve("./runtime.js");

// "mcpx-runtime" and "servers/..." always mean ours: nothing in /workspace/node_modules can stand in for them.
const resolveFilename = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  if (request === "mcpx-runtime") return RUNTIME;
  if (request === "servers" || request.startsWith("servers/")) request = path.join(TOOLS, request);
  return resolveFilename.call(this, request, ...rest);
};

function transpile(source, filePath) {
  const code = transform(source, { transforms: ["typescript", "imports"], filePath }).code;
  // Sloppy mode as in Node's REPL, and no "use strict" directive to become the value of a cell of declarations.
  return code.startsWith('"use strict";') ? code.slice('"use strict";'.length) : code;
}

Module._extensions[".ts"] = (module, filename) => {
  module._compile(transpile(fs.readFileSync(filename, "utf8"), filename), filename);
};

function send(message) {
  const data = Buffer.from(JSON.stringify(message) + "\n");
  for (let offset = 0; offset < data.length; ) offset += fs.writeSync(EVT_FD, data, offset);
}

runtime.connect(process.env.MCPX_SOCKET || "/run/mcpx/bridge.sock", MAX_FRAME);

function toJSON(value) {
  if (value === undefined) return null;
  let text;
  try {
    text = JSON.stringify(value);
  } catch {
    text = undefined;
  }
  if (text !== undefined && text.length <= MAX_RESULT_CHARS) return JSON.parse(text);
  const shown = util.inspect(value, { depth: 4 });
  return shown.length <= MAX_RESULT_CHARS ? shown : shown.slice(0, MAX_RESULT_CHARS) + "...<truncated>";
}

function describe(error) {
  if (error === null || typeof error !== "object") {
    return { type: "Error", message: String(error), traceback: `Uncaught ${util.inspect(error)}\n` };
  }
  // The agent's frames only: none of this worker's, Node's internals or the REPL's.
  const stack = String(error.stack ?? "")
    .split("\n")
    .filter((line) => !/^\s+at /.test(line) || !/(node:|\/mcpx_node\/|\brepl\b|new Promise \(<anonymous>\))/.test(line));
  return {
    type: String(error.name ?? error.constructor?.name ?? "Error"),
    message: String(error.message ?? ""),
    traceback: stack.join("\n") + "\n",
  };
}

const evaluator = repl.start({
  input: new stream.PassThrough(),
  output: new stream.Writable({ write: (_chunk, _encoding, done) => done() }),
  terminal: false,
  useGlobal: true,
  breakEvalOnSigint: true,
  prompt: "",
});
let cells = 0;
let interrupt = null;
let current = null; // the running cell's `finish`
// The evaluator runs in its own domain and reports a cell's exception (or rejection) there, not to the callback.
evaluator._domain.on("error", (error) => current?.(error));

// A cell's promise rejected by nobody, or a timer's callback throwing, is reported, not fatal: as in Python,
// a failure in the background must not cost the session its state.
process.on("unhandledRejection", (error) => process.stderr.write(`Unhandled rejection: ${describe(error).traceback}`));
process.on("uncaughtException", (error) => process.stderr.write(`Uncaught exception: ${describe(error).traceback}`));

function runCell(source) {
  return new Promise((resolve) => {
    let settled = false;
    const finish = (error, value) => {
      if (settled) return;
      settled = true;
      if (interrupt !== null) process.removeListener("SIGINT", interrupt);
      interrupt = current = null;
      resolve(error ? { error: describe(error) } : { result: toJSON(value) });
    };
    current = finish;
    const filename = `cell-${++cells}.ts`;
    let code;
    try {
      code = transpile(source, filename);
    } catch (error) {
      finish(Object.assign(new SyntaxError(error.message), { stack: `SyntaxError: ${error.message}` }));
      return;
    }
    // Synchronous code is stopped by the evaluator's own SIGINT watchdog (breakEvalOnSigint); once the cell
    // awaits, this listener ends it and the worker keeps its state.
    evaluator.eval(code, evaluator.context, filename, (error, value) => {
      if (error instanceof repl.Recoverable) error = error.err;
      finish(error, value);
    });
    if (!settled) {
      interrupt = () => finish(Object.assign(new Error("interrupted"), { name: "KeyboardInterrupt", stack: "" }));
      process.on("SIGINT", interrupt);
    }
  });
}

function flushed(output) {
  return new Promise((resolve) => (output.writableLength === 0 ? resolve() : output.write("", () => resolve())));
}

let queue = Promise.resolve();
const inbox = new LineReader(MAX_FRAME);
const commands = new net.Socket({ fd: CMD_FD, readable: true, writable: false });
commands.on("data", (chunk) => {
  let messages;
  try {
    messages = inbox.feed(chunk);
  } catch {
    process.exit(2);
  }
  for (const message of messages) {
    if (message?.type !== "execute") continue;
    queue = queue.then(async () => {
      runtime.trace(typeof message.traceparent === "string" ? message.traceparent : "");
      const reply = await runCell(String(message.code ?? ""));
      // A write to a full pipe is queued and finished later: report only once the cell's output has left, or the
      // supervisor would close the execution while some of it is still on its way.
      await Promise.all([flushed(process.stdout), flushed(process.stderr)]);
      send({ type: "done", id: message.id, ...reply });
    });
  }
});
commands.on("end", () => process.exit(0));
commands.on("error", () => process.exit(0));

send({ type: "ready", pid: process.pid });
