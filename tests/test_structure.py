"""The package's shape (issue 22): small modules, no import circles, arrows that point down,
and a module map in docs/architecture.md that matches the tree."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from keras_qrobust._deprecated import MOVED

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_qrobust"
MAX_LINES = 450
#: an import on a line carrying this marker is an old path kept for one release (not an arrow of the design)
DEPRECATED_BRIDGE = "deprecated bridge"


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()
#: the shims of moved modules and the top-level API module sit outside the design's layers
ENTRY_POINTS = {"keras_qrobust", *(f"keras_qrobust.{old}" for old in MOVED)}


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    names = [f"{prefix}.{alias.name}" for alias in node.names]
    return [name if name in MODULES else prefix for name in names]


def _imports(module: str, path: Path) -> set[str]:
    """The package modules ``module`` imports, at load time or inside functions (bridges excepted)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and DEPRECATED_BRIDGE in lines[node.lineno - 1]:
            continue
        if isinstance(node, ast.ImportFrom):
            targets = _resolve(module, path, node)
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith("keras_qrobust") and target != module:
                found.add(target)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items() if m not in ENTRY_POINTS}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _room(module: str) -> str:
    """The top-level package or module a module belongs to (its room)."""
    return ".".join(module.split(".")[:2])


def test_the_checked_out_tree_is_small():
    git = ROOT / ".git"
    if not git.exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    files = [ROOT / name for name in listed.decode().split("\0") if name]
    sizes = {str(f.relative_to(ROOT)): f.stat().st_size for f in files if f.is_file()}
    total = sum(sizes.values())
    largest = sorted(sizes, key=sizes.get, reverse=True)[:3]
    assert total < 5_000_000, f"the tracked files take {total:,} B (limit 5 MB); largest: {largest}"


def test_no_module_is_over_the_line_limit():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules by the concepts inside them (limit {MAX_LINES} lines): {long}"


def test_no_import_circle_between_modules():
    graph = {m: {t for t in targets if t not in ENTRY_POINTS} for m, targets in GRAPH.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_every_arrow_between_rooms_points_down():
    # a package's __init__ re-exports its own modules; rooms are the top-level packages and modules
    rooms: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        rooms.setdefault(_room(module), set()).update(_room(t) for t in targets if _room(t) != _room(module))
    rooms = {room: {t for t in targets if t not in ENTRY_POINTS} for room, targets in rooms.items()}
    assert _cycle(rooms) is None, "rooms import each other: " + " -> ".join(_cycle(rooms))


def _floors() -> dict[str, int]:
    """Room -> floor, from the table in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    floors = {}
    for number, cells in re.findall(r"^\| (\d+) \| (.+) \|$", text, re.M):
        for name in re.findall(r"`([\w.]+)/?`", cells):
            floors["keras_qrobust." + name.removesuffix(".py")] = int(number)
    return floors


def test_every_import_points_down_the_documented_floors():
    floors = _floors()
    rooms = {_room(m) for m in GRAPH}
    assert not rooms - set(floors), f"docs/architecture.md gives no floor to {sorted(rooms - set(floors))}"
    upward = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                    if t not in ENTRY_POINTS and floors[_room(t)] >= floors[_room(m)] and _room(t) != _room(m))
    assert not upward, f"imports that do not point down a floor: {upward}"


def test_the_walk_sees_a_circle_and_an_upward_arrow():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    assert "keras_qrobust.quantizers.grid" in GRAPH["keras_qrobust.analysis.bit_width_search"]


def _module_map() -> set[str]:
    """The paths (relative to keras_qrobust/) listed under "## Module map": nested bullets are
    inside the folder of the bullet above them (``- `export/` `` then ``  - `runtime/` ``...)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    listed, folders = set(), []  # folders: (indent, path) of the open folder bullets
    for line in section.splitlines():
        match = re.match(r"^(\s*)- `([\w/.]+)`", line)
        if not match:
            continue
        indent, name = len(match.group(1)), match.group(2)
        while folders and folders[-1][0] >= indent:
            folders.pop()
        path = (folders[-1][1] if folders else "") + name
        listed.add(path)
        if name.endswith("/"):
            folders.append((indent, path))
    return listed


def test_the_module_map_matches_the_tree():
    listed = _module_map()
    on_disk = set()
    for path in MODULES.values():
        relative = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py":
            on_disk.add(relative.removesuffix("__init__.py") or "__init__.py")
        else:
            on_disk.add(relative)
    shims = {old.replace(".", "/") for old in MOVED}
    on_disk = {p for p in on_disk if p.removesuffix(".py").removesuffix("/") not in shims and p != "__init__.py"}
    assert not listed - on_disk, f"docs/architecture.md lists modules that do not exist: {sorted(listed - on_disk)}"
    assert not on_disk - listed, f"docs/architecture.md does not list: {sorted(on_disk - listed)}"


def test_the_module_map_reader(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "architecture.md").write_text(
        "# A\n\n## Module map\n\n- `zoo.py` — z\n- `export/` — e\n  - `runtime/` — r\n    - `base.py` — b\n"
        "  - `onnx.py` — o\n- `metrics.py` — m\n\n## Next\n\n- `x.py`\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert _module_map() == {"zoo.py", "export/", "export/runtime/", "export/runtime/base.py", "export/onnx.py",
                             "metrics.py"}
