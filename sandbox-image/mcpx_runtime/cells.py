"""Which tool calls in a cell run concurrently: the ones the code awaits, gathers or schedules as tasks.

A stub call returns its result, always, unless the cell hands the call to the event loop. Before a cell runs, each
such call site `f(args)` is rewritten to `__mcpx_awaited__(f, args)`, and a stub called through that wrapper returns
an awaitable instead (`tools.awaited`). Such a site is:
- the operand of `await`: `await get(x=1)`;
- an argument of an asyncio scheduling function (`gather`, `create_task`, `wait`, ...), directly, as an element of
  a list or tuple, or as the element of a comprehension: `gather(*(get(x=i) for i in ids))`;
- a value stored in a name that the same scope awaits or gathers: `calls = [get(x=i) for i in ids]` followed by
  `await asyncio.gather(*calls)`, or `tasks.append(get(x=1))` followed by `gather(*tasks)`.
Anything else is a plain call. The rewrite moves no line: tracebacks point at the agent's own code.
"""

from __future__ import annotations

import ast

AWAITED = "__mcpx_awaited__"
SCHEDULERS = frozenset(
    {"gather", "create_task", "ensure_future", "wait", "wait_for", "shield", "as_completed", "run", "timeout"}
)
COLLECTORS = frozenset({"append", "extend", "add", "insert"})
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def rewrite(tree: ast.Module) -> ast.Module:
    """`tree` with every call site handed to the event loop wrapped in `__mcpx_awaited__` (in place)."""
    _Scope(tree).run()
    return ast.fix_missing_locations(tree)


def _callee_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _own_nodes(scope: ast.AST) -> list[ast.AST]:
    """The nodes of one scope, without those of the functions and classes defined inside it."""
    found: list[ast.AST] = []
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        found.append(node)
        if not isinstance(node, SCOPES):
            stack.extend(ast.iter_child_nodes(node))
    return found


class _Scope:
    def __init__(self, node: ast.AST) -> None:
        self.node = node
        self.nodes = _own_nodes(node)
        self.awaited_names = self._awaited_names()

    def run(self) -> None:
        self.marked: dict[int, ast.Call] = {}
        for node in self.nodes:
            if isinstance(node, ast.Await):
                self._mark(node.value)
            elif isinstance(node, ast.Call):
                self._visit_call(node)
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id in self.awaited_names for t in targets):
                    self._mark(node.value)
        # Rewritten only once every site is known: a rewritten call no longer names its callee.
        for call in self.marked.values():
            call.args = [call.func, *call.args]
            call.func = ast.copy_location(ast.Name(AWAITED, ast.Load()), call.func)
        for node in self.nodes:
            if isinstance(node, SCOPES):
                _Scope(node).run()

    def _visit_call(self, call: ast.Call) -> None:
        name = _callee_name(call)
        if name in SCHEDULERS or (
            name in COLLECTORS
            and isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Name)
            and call.func.value.id in self.awaited_names
        ):
            for argument in call.args:
                self._mark(argument)

    def _awaited_names(self) -> frozenset[str]:
        """Names this scope awaits or passes to a scheduler, itself or spread (`*calls`)."""
        operands: list[ast.expr] = []
        for node in self.nodes:
            if isinstance(node, ast.Await):
                operands.append(node.value)
            elif isinstance(node, ast.Call) and _callee_name(node) in SCHEDULERS:
                operands.extend(node.args)
        names: set[str] = set()
        for operand in operands:
            while isinstance(operand, ast.Starred):
                operand = operand.value
            if isinstance(operand, ast.Name):
                names.add(operand.id)
            elif isinstance(operand, ast.Subscript) and isinstance(operand.value, ast.Name):
                names.add(operand.value.id)
            elif isinstance(operand, ast.GeneratorExp | ast.ListComp | ast.SetComp | ast.List | ast.Tuple):
                # gather(*(t for t in tasks)) and gather(*[tasks[0], tasks[1]]) name their sources too.
                names.update(n.id for n in ast.walk(operand) if isinstance(n, ast.Name))
        return frozenset(names)

    def _mark(self, expression: ast.expr) -> None:
        if isinstance(expression, ast.Starred):
            self._mark(expression.value)
        elif isinstance(expression, ast.List | ast.Tuple | ast.Set):
            for element in expression.elts:
                self._mark(element)
        elif isinstance(expression, ast.GeneratorExp | ast.ListComp | ast.SetComp):
            self._mark(expression.elt)
        elif isinstance(expression, ast.Call):
            self.marked[id(expression)] = expression
