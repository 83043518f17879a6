// node check_stubs.cjs TREE RUNTIME_D_TS: every .ts file under TREE, read by the real TypeScript compiler.
// Prints {"files": n, "problems": [...]}: parse errors, any statement a stub must not have (anything that could run
// on import besides declarations and the one `return (await callTool(...)) as T` of a tool function), and the
// type errors of the whole tree under --strict. typescript is found through NODE_PATH.
"use strict";
const fs = require("fs");
const path = require("path");
const ts = require("typescript");

const [root, runtimeTypes] = process.argv.slice(2);
const problems = [];
const files = [];
(function walk(dir) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) walk(full);
    else if (entry.name.endsWith(".ts")) files.push(full);
  }
})(root);

const isString = (node) => node !== undefined && ts.isStringLiteral(node);

function toolCall(fn) {
  const body = fn.body?.statements ?? [];
  if (body.length !== 1 || !ts.isReturnStatement(body[0])) return false;
  const cast = body[0].expression;
  if (!cast || !ts.isAsExpression(cast) || !ts.isParenthesizedExpression(cast.expression)) return false;
  const awaited = cast.expression.expression;
  if (!ts.isAwaitExpression(awaited) || !ts.isCallExpression(awaited.expression)) return false;
  const call = awaited.expression;
  const [server, tool, input, ...rest] = call.arguments;
  return (
    ts.isIdentifier(call.expression) && call.expression.text === "callTool" && isString(server) && isString(tool) &&
    input !== undefined && ts.isIdentifier(input) && input.text === "input" && rest.length === 0 &&
    fn.parameters.length === 1 && (!fn.parameters[0].initializer ||
      (ts.isObjectLiteralExpression(fn.parameters[0].initializer) && fn.parameters[0].initializer.properties.length === 0))
  );
}

function servers(statement) {
  const declarations = statement.declarationList.declarations;
  return declarations.length === 1 && declarations[0].name.getText() === "SERVERS" &&
    ts.isObjectLiteralExpression(declarations[0].initializer) &&
    declarations[0].initializer.properties.every((p) => ts.isPropertyAssignment(p) && isString(p.name) && isString(p.initializer));
}

for (const file of files) {
  const where = path.relative(root, file);
  const source = ts.createSourceFile(file, fs.readFileSync(file, "utf8"), ts.ScriptTarget.ES2022, true, ts.ScriptKind.TS);
  for (const diagnostic of source.parseDiagnostics) {
    problems.push(`${where}: ${ts.flattenDiagnosticMessageText(diagnostic.messageText, "\n")}`);
  }
  for (const statement of source.statements) {
    const fine =
      (ts.isImportDeclaration(statement) && statement.moduleSpecifier.text === "mcpx-runtime") ||
      (ts.isExportDeclaration(statement) &&
        (statement.moduleSpecifier.text === "mcpx-runtime" || /^\.\/[a-z0-9_]+$/.test(statement.moduleSpecifier.text))) ||
      ts.isInterfaceDeclaration(statement) ||
      ts.isTypeAliasDeclaration(statement) ||
      (ts.isFunctionDeclaration(statement) && toolCall(statement)) ||
      (ts.isVariableStatement(statement) && where === path.join("servers", "index.ts") && servers(statement));
    if (!fine) problems.push(`${where}: unexpected ${ts.SyntaxKind[statement.kind]}: ${statement.getText().slice(0, 200)}`);
  }
}

const program = ts.createProgram(files, {
  strict: true,
  noEmit: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.CommonJS,
  moduleResolution: ts.ModuleResolutionKind.Node10,
  baseUrl: root,
  paths: { "mcpx-runtime": [path.resolve(runtimeTypes)] },
  types: [],
  lib: ["lib.es2022.d.ts"],
});
for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
  const where = diagnostic.file ? path.relative(root, diagnostic.file.fileName) : "";
  problems.push(`${where}: ${ts.flattenDiagnosticMessageText(diagnostic.messageText, "\n")}`);
}
console.log(JSON.stringify({ files: files.length, problems }));
