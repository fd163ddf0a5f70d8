"""The package's import graph: layers bottom to top, no upward import, no cycle, no private name
used across modules. Read from the source (AST), so deferred imports inside functions count too."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxgen"

# Bottom to top. A module may import its own layer or a lower one. `*.cli` modules belong to the
# top layer wherever they live (they dispatch to anything below).
LAYERS = [
    ["jaxgen.errors", "jaxgen.registry", "jaxgen.concurrent_batches", "jaxgen.cpu_devices",
     "jaxgen.parallel", "jaxgen.launch"],
    ["jaxgen.models", "jaxgen.data", "jaxgen.config"],
    ["jaxgen.checkpoint", "jaxgen.convert"],
    ["jaxgen.sampling"],
    ["jaxgen.eval"],
    ["jaxgen.rewards"],
    ["jaxgen.train"],
    ["jaxgen.api", "jaxgen.demo", "jaxgen.bench", "jaxgen.cli", "jaxgen"],
]


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int:
    if module.endswith(".cli"):
        return len(LAYERS) - 1
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    if best is None:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS in {__file__}")
    return best


def _imports(module: str, path: pathlib.Path, modules: dict):
    """(imported jaxgen module, imported name or None, line) for every import in the file."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("jaxgen"):
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("jaxgen"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:  # `from jaxgen.train import loop` imports a module
                    yield sub, None, node.lineno
                else:
                    yield target, alias.name, node.lineno


def _graph():
    modules = _modules()
    return modules, {m: list(_imports(m, p, modules)) for m, p in modules.items()}


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


def test_no_module_imports_a_higher_layer():
    _, graph = _graph()
    upward = [f"{m}:{line} imports {target} (layer {_layer(target)} > {_layer(m)})"
              for m, edges in graph.items() for target, _, line in edges
              if _layer(target) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_no_private_name_is_used_across_modules():
    modules, graph = _graph()
    found = []
    for m, edges in graph.items():
        for target, name, line in edges:
            if name and name.startswith("_") and target != m:
                found.append(f"{m}:{line} imports {target}.{name}")
        # `module._name` through an imported module
        tree = ast.parse(modules[m].read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxgen"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in modules:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("jaxgen") and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__") and aliases[node.value.id] != m):
                found.append(f"{m}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not found, "\n".join(found)


def test_no_import_cycles():
    modules, graph = _graph()
    edges = {m: sorted({t for t, _, _ in es if t in modules and t != m and
                        not m.startswith(t + ".")})  # a package's own __init__ runs first
             for m, es in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in edges[m]:
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("module, expected", [("jaxgen.train.cli", 7), ("jaxgen.models.janus", 1),
                                              ("jaxgen.checkpoint.files", 2)])
def test_layer_lookup(module, expected):
    assert _layer(module) == expected
