"""The code's shape: no import circle (not even inside functions), stages never import stages, the core
never imports a stage, and files a reader can hold in mind."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    """Module name -> file, for vgfcli/ and stages/ (installed as vgfcli.stages)."""
    out = {}
    for base, package in ((ROOT / "vgfcli", "vgfcli"), (ROOT / "stages", "vgfcli.stages")):
        for path in base.rglob("*.py"):
            if "conf" in path.relative_to(base).parts[:1]:
                continue
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every vgfcli module ``name`` imports, at module level or inside functions alike."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from pkg import sub` imports the submodule where one exists, else a name of pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_circle():
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_stages_import_only_core_and_core_no_stage():
    graph = _graph()
    wrong = sorted(f"{src} imports {dst}" for src, targets in graph.items() for dst in targets
                   if dst.startswith("vgfcli.stages.") and src != dst)
    assert wrong == [], "\n".join(wrong)
    assert len(graph) > 40 and graph["vgfcli.stages.evaluate"], "the import graph was not read"


def test_files_stay_short():
    long = {str(path.relative_to(ROOT)): n for path in [*(ROOT / "vgfcli").rglob("*.py"), *(ROOT / "stages").glob("*.py")]
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"files over {MAX_LINES} lines: {long}"
