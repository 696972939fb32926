"""The README and the docs cite files of this repository: each one exists. A cited path is a Markdown
link's relative target, or a code span that starts with one of the repository's own top-level entries
(`dags/fruit_pipeline.py`, `docs/models.md`); what the stack makes at run time (`.state/`, `out/`,
`dist/`) is not in the repository and is not checked."""

import re
from pathlib import Path

import pytest

from fruitflow.paths import ROOT

DOCS = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GENERATED = {".state", "out", "dist", ".venv", "build"}  # made by the stack and the build: never tracked
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\s]+)`")
PATH = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.*-]+)*/?")


def top_level_entries() -> set[str]:
    return {p.name for p in ROOT.iterdir() if not p.name.startswith(".") and p.name not in GENERATED}


def cited_paths(text: str, top: set[str]) -> set[str]:
    cited = set()
    for target in LINK.findall(text):
        if not re.match(r"[a-z]+:|#", target):
            cited.add(target.split("#", 1)[0])
    for span in CODE.findall(text):
        if PATH.fullmatch(span) and "/" in span.rstrip("/") and span.split("/", 1)[0] in top:
            cited.add(span)
    return cited


def missing(doc: Path, top: set[str]) -> list[str]:
    gone = []
    for path in sorted(cited_paths(doc.read_text(), top)):
        # a link is relative to its doc, a code span to the repository's root
        candidates = [doc.parent / path, ROOT / path]
        if not any(c.exists() or ("*" in path and list(ROOT.glob(path))) for c in candidates):
            gone.append(path)
    return gone


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_file_a_doc_cites_exists(doc):
    assert missing(doc, top_level_entries()) == []


def test_the_check_sees_a_cited_file_that_does_not_exist(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("See `docs/never-written.md`, [this](docs/models.md) and `.state/credentials/x.json`.\n")
    assert missing(doc, top_level_entries()) == ["docs/never-written.md"]


def test_the_readme_is_a_short_guide():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150

