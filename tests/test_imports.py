"""The import graph of mmjax: no cycles, and no mmjax module imported inside a function of
the data package, the media layer or the predictor (lazy imports there are only for
optional heavy libraries such as tensorflow_datasets, each with a comment)."""
import ast
import pathlib

MMJAX = pathlib.Path(__file__).resolve().parent.parent / "mmjax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(MMJAX.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return []


def import_graph() -> dict[str, set[str]]:
    """{module: the mmjax modules it imports anywhere in its file}."""
    files = {_module_name(p): p for p in MMJAX.rglob("*.py")}
    return {name: {m for node in ast.walk(ast.parse(path.read_text()))
                   for m in _imported(node) if m in files and m != name}
            for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    done, path = set(), []

    def visit(name):
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        path.append(name)
        for dep in sorted(graph[name]):
            if cycle := visit(dep):
                return cycle
        path.pop()
        done.add(name)
        return None

    return next((c for c in map(visit, sorted(graph)) if c), None)


def test_mmjax_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "mmjax.data.writer" in graph["mmjax.data.synthetic"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_function_level_import_of_mmjax_in_data_media_and_predict():
    files = [*sorted((MMJAX / "data").glob("*.py")), MMJAX / "media.py", MMJAX / "predict.py"]
    late = []
    for path in files:
        for func in ast.walk(ast.parse(path.read_text())):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                late += [f"{path.name}:{n.lineno} imports {m}" for n in ast.walk(func)
                         for m in _imported(n)[:1] if m.split(".")[0] == "mmjax"]
    assert late == []
