"""The package's shape: no import cycles between modules (the layer contracts themselves are
checked by `lint-imports` in `make test`, from .importlinter)."""

import grimp


def _cycles(graph):
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles():
    graph = grimp.build_graph("cxr_tf", "pipelines")
    assert _cycles(graph) == []


def test_binaries_import_the_facade_only():
    graph = grimp.build_graph("cxr_tf", "pipelines")
    # The facade; the configs for their flags; the failure classes for their exit codes.
    allowed = {"cxr_tf.workflow", "cxr_tf.configs", "cxr_tf.errors", "cxr_tf"}
    for module in graph.find_children("pipelines") | {"pipelines"}:
        imported = {m for m in graph.find_modules_directly_imported_by(module)
                    if m.startswith("cxr_tf")}
        assert imported <= allowed, (module, imported - allowed)


def test_facade_has_no_forwarders():
    """cxr_tf.workflow orchestrates; a function there whose whole body is one call into another
    module is a forwarder (binaries call that module through the facade instead)."""
    import ast
    import pathlib

    source = pathlib.Path(__file__).resolve().parents[1] / "cxr_tf" / "workflow.py"
    forwarders = []
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute):
            forwarders.append(f"{node.lineno} {ast.unparse(node)}")
        if not isinstance(node, ast.FunctionDef):
            continue
        body = [n for n in node.body if not (isinstance(n, ast.Expr)
                                             and isinstance(n.value, ast.Constant))]
        if (len(body) == 1 and isinstance(body[0], (ast.Return, ast.Expr))
                and isinstance(body[0].value, ast.Call)
                and isinstance(body[0].value.func, ast.Attribute)):
            forwarders.append(f"{node.lineno} def {node.name}")
    assert forwarders == [], "one-line forwarders in cxr_tf/workflow.py:\n" + "\n".join(
        forwarders)


def test_work_directory_names_are_spelled_only_in_layout():
    """Every path into a work directory is built from cxr_tf.layout's names, so moving a folder
    is a one-line change there: no other module joins one of those names as a literal."""
    import ast
    import pathlib

    from cxr_tf import layout
    names = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)}
    root = pathlib.Path(__file__).resolve().parents[1]
    found = []
    for path in sorted([*root.glob("cxr_tf/**/*.py"), *root.glob("pipelines/*.py"),
                        *root.glob("tools/*.py")]):
        if path.name == "layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "join"):
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and arg.value in names:
                        found.append(f"{path.relative_to(root)}:{node.lineno} {arg.value!r}")
    assert found == [], "work-directory names outside cxr_tf/layout.py:\n" + "\n".join(found)
