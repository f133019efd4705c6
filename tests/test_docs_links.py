"""Every relative link in the documentation resolves to a file of this repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# [text](target) and [text](target "title"); images too. Reference definitions: [id]: target
_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
# A path to a Markdown file written as code (`../shared/DESIGN.md`): as good as a link to a reader.
_CODE_PATH = re.compile(r"`([\w./-]+/[\w.-]+\.md)`")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _documents() -> list[Path]:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("adapters/*/README.md"))]
    return [d for d in docs if d.is_file()]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*|_(?=\W)|(?<=\W)_", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = _FENCE.sub("", doc.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE)}


def _inside_repo(path: Path) -> bool:
    try:
        path.resolve().relative_to(ROOT)
    except ValueError:
        return False
    return True


def _problems(doc: Path, text: str | None = None) -> list[str]:
    text = _FENCE.sub("", doc.read_text(encoding="utf-8") if text is None else text)
    problems = []
    targets = [m.group(1) for m in _INLINE.finditer(text)] + [m.group(1) for m in _REFERENCE.finditer(text)]
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        linked = (doc.parent / path_part) if path_part else doc
        if not _inside_repo(linked) or not linked.exists():
            problems.append(f"{target}: no such file in the repository")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            problems.append(f"{target}: {linked.name} has no heading with the anchor #{anchor}")
    for match in _CODE_PATH.finditer(text):
        # Written as code, a path may be relative to the document or to the repository root.
        candidates = (doc.parent / match.group(1), ROOT / match.group(1))
        if not any(_inside_repo(c) and c.exists() for c in candidates):
            problems.append(f"`{match.group(1)}`: no such file in the repository")
    return problems


@pytest.mark.parametrize("doc", _documents(), ids=lambda d: str(d.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(doc: Path) -> None:
    """Catches dead links in a clone, such as README's old ``../shared/DESIGN.md``: a path that
    left the repository (it resolved only on the machine that wrote it) or a file that moved."""
    assert _problems(doc) == []


def test_the_checker_sees_dead_links() -> None:
    """Catches a checker that passes everything (a regex that matches no link would): a link out
    of the repository, a code path to a missing file, a missing anchor; a good link passes."""
    text = (
        "[d](../shared/DESIGN.md) `../x/Y.md` [a](#nope) "
        "[ok](docs/design.md#3-semantics-every-transport-shows-the-conformance-kit-checks-each-line)"
    )
    problems = _problems(ROOT / "README.md", text)
    assert [p.split(":")[0] for p in problems] == ["../shared/DESIGN.md", "#nope", "`../x/Y.md`"]


_CITATION = re.compile(r"\b(kit|transport)::(test_\w+)|\b(tests/[\w/]+\.py)(?:::(test_\w+))?")


def _cited_tests_missing(text: str) -> list[str]:
    from messagebus.testing.conformance import TransportConformance
    from messagebus.testing.transport_kit import TransportKit

    layers: dict[str, type] = {"kit": TransportConformance, "transport": TransportKit}
    missing = []
    for layer, name, path, function in _CITATION.findall(text):
        if layer:
            if not callable(getattr(layers[layer], name, None)):
                missing.append(f"{layer}::{name}")
        elif not (ROOT / path).is_file():
            missing.append(path)
        elif function and not re.search(
            rf"^(async )?def {function}\(", (ROOT / path).read_text(encoding="utf-8"), re.MULTILINE
        ):
            missing.append(f"{path}::{function}")
    return missing


def test_every_guarantee_names_tests_that_exist() -> None:
    """Catches docs/guarantees.md citing a test that was renamed or removed (the guarantee is
    then proved by nothing), and a guarantee row that cites no test at all."""
    text = (ROOT / "docs" / "guarantees.md").read_text(encoding="utf-8")
    assert _cited_tests_missing(text) == []
    section = text.split("## The same on every transport", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| guarantee")]
    assert rows
    uncited = [row.split("|")[1].strip() for row in rows if not _CITATION.search(row.split("|")[2])]
    assert uncited == [], f"guarantees without a test: {uncited}"


def test_the_citation_checker_sees_a_missing_test() -> None:
    """Catches a citation checker that accepts anything."""
    text = "kit::test_no_such_thing transport::test_ack_settles_for_good tests/test_bus.py::test_gone tests/nope.py"
    assert _cited_tests_missing(text) == ["kit::test_no_such_thing", "tests/test_bus.py::test_gone", "tests/nope.py"]
