"""The package's import graph, read from the source (ast): imports point down the layer order of
``src/sparsa/__init__.py``'s docstring, packages of one layer do not import each other, and no
modules import each other in a cycle. Function-local imports count: they are imports all the same."""

import ast
import pathlib

import sparsa

SRC = pathlib.Path(sparsa.__file__).parent

# top-level module or package under sparsa -> its layer (lower imports nothing higher)
LAYERS = {
    "": 0, "errors": 0, "atomic": 0, "json_safe": 0, "openmp": 0, "import_noise": 0, "registry": 0,
    "transformers_hook": 0,
    "formats": 1, "data": 1,
    "kernels": 2,
    "nn": 3,
    "evaluate": 4,
    "compress": 5, "attention": 5, "sfm": 5, "merge": 5,
    "bench": 6,
    "demo": 7,
    "cli": 8,
    "__main__": 9,
}
SHARED = {"", "errors", "atomic", "json_safe", "openmp", "import_noise", "registry", "transformers_hook"}  # one layer, importable by all


def module_name(path: pathlib.Path) -> str:
    parts = ("sparsa", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path) -> set[str]:
    """The sparsa modules ``path`` imports: the most specific module each import names."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(filter(None, (package.rsplit(".", node.level - 1)[0], base)))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {name for name in found if name == "sparsa" or name.startswith("sparsa.")}


def top(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}
GRAPH = {name: imports(path) for name, path in MODULES.items()}


def test_every_top_level_module_has_a_layer():
    assert {top(m) for m in MODULES} <= set(LAYERS), sorted({top(m) for m in MODULES} - set(LAYERS))


def test_imports_point_down_the_layers_and_no_package_imports_a_peer():
    wrong = []
    for module, targets in GRAPH.items():
        for target in targets:
            a, b = top(module), top(target)
            if a == b or b in SHARED:
                continue
            if LAYERS[b] >= LAYERS[a]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports pointing up or across a layer:\n" + "\n".join(sorted(wrong))


def test_the_package_root_imports_only_the_shared_modules():
    assert {top(t) for t in GRAPH["sparsa"]} <= SHARED


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (module -> modules it imports) as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_the_graph_is_read_from_the_source():
    assert "sparsa.kernels.dispatch" in GRAPH["sparsa.kernels.cpu.quant"]
    assert "sparsa.formats.quant" in GRAPH["sparsa.kernels.cpu.quant"]


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
