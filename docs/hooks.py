"""mkdocs hooks of the keras_qrobust site (``hooks:`` in mkdocs.yml; not a page).

The pages in ``docs/`` are also read on their own (the README links to them), so they link
to repository files outside ``docs/`` with ordinary relative links, e.g.
``../benchmarks/results/ptq.md``. For the site:

* every committed benchmark result ``benchmarks/results/NAME.md`` is published as the page
  ``results/NAME.md`` (nav section "Benchmark results"), and links to it are pointed there;
* a link to any other repository file becomes that file's path in code, since the site
  does not carry the sources; a link to a file that does not exist is a warning, so
  ``mkdocs build --strict`` fails on it;
* Sphinx cross-reference roles in docstrings (``:class:`X``` and the like) become plain
  code (``X``; ``~a.b.C`` as ``C``) before griffe parses them (``SphinxRoles``, a griffe
  extension listed in the mkdocstrings options), so that a role does not read as a
  ``name: description`` item in an Args/Returns section.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from pathlib import Path

import griffe
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.keras_qrobust")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SITE_RESULTS = "results"
NAV_SECTION = "Benchmark results"

_LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const):`(~?)\.?([^`]*)`")


def result_pages() -> list[Path]:
    """The benchmark results published on the site (quick runs are local, never published)."""
    return sorted(p for p in RESULTS.glob("*.md") if not p.stem.endswith("_quick"))


def on_config(config):
    pages = [f"{SITE_RESULTS}/{p.name}" for p in result_pages()]
    if pages and config.nav is not None:
        config.nav.append({NAV_SECTION: pages})
    return config


def on_files(files, config):
    for path in result_pages():
        files.append(File(f"{SITE_RESULTS}/{path.name}", src_dir=str(RESULTS.parent),
                          dest_dir=config.site_dir, use_directory_urls=config.use_directory_urls))
    return files


def _rewrite(match: re.Match, page, config) -> str:
    image, text, url = match.groups()
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", url) or url.startswith(("#", "/")):
        return match.group(0)
    path, hash_, fragment = url.partition("#")
    page_dir = posixpath.dirname(page.file.src_uri)
    if not path or not posixpath.normpath(posixpath.join(page_dir, path)).startswith("../"):
        return match.group(0)                     # inside docs/: mkdocs checks it
    if page.file.src_uri.startswith(SITE_RESULTS + "/"):
        return match.group(0)
    target = Path(os.path.normpath(Path(config.docs_dir) / page_dir / path))
    try:
        repo_path = target.relative_to(ROOT).as_posix()
    except ValueError:
        repo_path = None
    if repo_path is None or not target.exists():
        log.warning("Doc file '%s' links to '%s', which is outside docs/ and does not exist in the "
                    "repository.", page.file.src_uri, url)
        return match.group(0)
    if target.parent == RESULTS and target in result_pages():
        site_path = posixpath.relpath(f"{SITE_RESULTS}/{target.name}", page_dir or ".")
        return f"{image}[{text}]({site_path}{hash_}{fragment})"
    if text.strip("`") == repo_path:
        return f"`{repo_path}`"
    return f"{text} (`{repo_path}`)"


def on_page_markdown(markdown, page, config, files):
    out, fenced = [], False
    for line in markdown.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
        out.append(line if fenced else _LINK.sub(lambda m: _rewrite(m, page, config), line))
    return "\n".join(out)


def _role(match: re.Match) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(griffe.Extension):
    """``:role:`target``` -> ``target`` in every docstring, before it is parsed."""

    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_role, obj.docstring.value)
