"""The documentation site builds with ``mkdocs build --strict``.

Strict mode (with the ``validation`` settings of mkdocs.yml and ``docs/hooks.py``) already
fails on a docs page missing from the nav, a nav entry without a page, a broken relative
link or anchor, a link to a repository file that does not exist and any griffe warning
about a docstring. The other tests check what strict mode does not: that those settings
stay in force, that every public module has an API page, that the built site loads
nothing from the network, and how docs/hooks.py treats links that leave docs/.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MKDOCS = Path(sys.executable).parent / "mkdocs"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if not MKDOCS.exists():
        pytest.fail(f"{MKDOCS} is missing: install the package with its `docs` extra (./run.sh setup)")
    site_dir = tmp_path_factory.mktemp("site")
    result = subprocess.run([str(MKDOCS), "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                             "--site-dir", str(site_dir)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return site_dir


def test_strict_build_succeeds(site):
    assert (site / "index.html").is_file()
    assert (site / "api" / "attacks.html").is_file()


def test_strict_checks_stay_enabled():
    config = (ROOT / "mkdocs.yml").read_text()
    validation = config[config.index("\nvalidation:"):]
    for key in ("omitted_files", "not_found", "absolute_links", "unrecognized_links", "anchors"):
        assert re.search(rf"^\s+{key}: warn$", validation, re.M), f"mkdocs.yml: validation {key} must be warn"
    assert re.search(r"^hooks:\n\s+- docs/hooks\.py$", config, re.M)


def _documented_modules() -> set[str]:
    found = set()
    for page in (DOCS / "api").glob("*.md"):
        found.update(re.findall(r"^::: (keras_qrobust(?:\.\w+)*)", page.read_text(), re.M))
    return found


def _public_modules() -> set[str]:
    """The submodules ``keras_qrobust/__init__.py`` re-exports, plus export and cli."""
    tree = ast.parse((ROOT / "keras_qrobust" / "__init__.py").read_text())
    modules = {"export", "cli"}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module is None:
                modules.update(alias.name for alias in node.names)
            elif not node.module.startswith("_"):
                modules.add(node.module.split(".")[0])
    modules.discard("version")  # only __version__
    return {f"keras_qrobust.{m}" for m in modules}


def test_every_public_module_has_an_api_page():
    missing = sorted(_public_modules() - _documented_modules())
    assert not missing, f"no `::: module` directive in docs/api/ for {missing}"


class _Assets(HTMLParser):
    """Collects the URLs a page loads by itself (scripts, stylesheets, images, frames)."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "audio", "video") and attrs.get("src"):
            self.urls.append(attrs["src"])
        if tag == "link" and attrs.get("href") and attrs.get("rel") in ("stylesheet", "preload", "icon"):
            self.urls.append(attrs["href"])


def test_site_loads_nothing_from_the_network(site):
    remote = {}
    for page in site.rglob("*.html"):
        parser = _Assets()
        parser.feed(page.read_text(encoding="utf-8"))
        urls = [u for u in parser.urls if re.match(r"^(https?:)?//", u)]
        if urls:
            remote[str(page.relative_to(site))] = urls
    assert not remote, f"pages load remote assets (the site must work offline): {remote}"
    css = " ".join(p.read_text(encoding="utf-8", errors="replace") for p in site.rglob("*.css"))
    assert not re.search(r"@import\s+(url\()?['\"]?(https?:)?//", css), "a stylesheet imports a remote one"


def _hooks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_links_leaving_docs(caplog):
    """docs/hooks.py: results pages are linked on the site, other repository files become
    their path, a missing file is a warning (which fails the strict build)."""
    from types import SimpleNamespace

    hooks = _hooks()
    config = SimpleNamespace(docs_dir=str(DOCS))
    result = hooks.result_pages()[0].name
    for src_uri, up in (("limits.md", "../"), ("api/attacks.md", "../../")):
        markdown = (f"[r]({up}benchmarks/results/{result}#top) [`run.sh`]({up}run.sh) [x](index.md)\n"
                    f"```\n[kept]({up}nowhere.md)\n```\n[gone]({up}nowhere.md)")
        page = SimpleNamespace(file=SimpleNamespace(src_uri=src_uri))
        caplog.clear()
        out = hooks.on_page_markdown(markdown, page, config, None).split("\n")
        assert out[0] == f"[r]({up[3:]}results/{result}#top) `run.sh` [x](index.md)"
        assert out[2] == f"[kept]({up}nowhere.md)"
        assert [r.levelname for r in caplog.records] == ["WARNING"] and "nowhere.md" in caplog.text


def test_the_supported_layer_tables_are_the_ones_the_code_generates(tmp_path):
    from keras_qrobust.quantization import layer_support

    assert layer_support.write_tables(ROOT, check=True) == [], (
        "README.md or docs/quantization.md holds a stale supported-layer table: run "
        "python -m keras_qrobust.quantization.layer_support --write")
    stale = tmp_path / "README.md"
    stale.write_text("x\n<!-- layer-support:start -->\nold\n<!-- layer-support:end -->\n", encoding="utf-8")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "quantization.md").write_text(stale.read_text(encoding="utf-8"), encoding="utf-8")
    assert layer_support.write_tables(tmp_path) == [stale, tmp_path / "docs" / "quantization.md"]
    assert layer_support.support_table() in stale.read_text(encoding="utf-8")


def test_the_supported_layer_table_lists_exactly_what_quantize_accepts():
    from keras_qrobust.quantization import layer_support
    from keras_qrobust.transforms import _kinds

    assert set(layer_support.LAYER_SUPPORT) == set(_kinds.SUPPORTED)


def _knob_cell(value) -> str:
    if value is None:
        return "all"
    return f"{value:,}" if isinstance(value, int) else f"`{value}`"


def test_the_guard_knob_table_states_the_presets(capsys):
    """docs/guard.md's `--quick` table and `guard --help` say what QUICK and FULL hold."""
    from keras_qrobust import cli
    from keras_qrobust.guard.config import FULL, QUICK

    rows = dict(re.findall(r"^\| `--([a-z-]+)` \| (.+?) \|$", (DOCS / "guard.md").read_text(), re.M))
    table = {flag: cells.split(" | ") for flag, cells in rows.items()}
    assert set(table) == {key.replace("_", "-") for key in QUICK}
    for key in QUICK:
        assert table[key.replace("_", "-")] == [_knob_cell(QUICK[key]), _knob_cell(FULL[key])], key
    assert cli.main(["guard", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for key in QUICK:
        full = "all" if FULL[key] is None else FULL[key]
        assert f"(quick {QUICK[key]}, else {full})" in text, key
