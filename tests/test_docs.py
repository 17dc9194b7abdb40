"""The project's own documentation stays short where it must and true where it points.

A newcomer follows the README, then a link into docs/, then a `docs/….md §N`
pointer in a docstring: each hop must land somewhere. These checks read the
files only, so they cost nothing to run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

#: The README is a guide, not the reference: the reference lives in docs/.
README_MAX_WORDS = 4500

#: The README's sections, in the order a newcomer needs them.
README_SECTIONS = (
    "Two commands on a fresh machine",
    "Make it your agent",
    "Test your agent",
    "Run it for a real number",
    "Run many instances",
    "Watch it",
    "Security",
)

MARKDOWN = [README, ROOT / "SECURITY.md", ROOT / "benchmarks" / "RESULTS.md", *sorted(DOCS.glob("*.md"))]
CODE = sorted(p for folder in ("telephony", "tests", "benchmarks", "tools") for p in (ROOT / folder).rglob("*.py"))

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
POINTER = re.compile(r"docs/([\w-]+\.md)((?:\s*(?:,|-|–|and)?\s*§\d+(?:\.\d+)?)*)")
SECTION = re.compile(r"§(\d+(?:\.\d+)?)")


def _prose(path: Path) -> str:
    """The file without its fenced code blocks, where brackets are code, not links."""
    return re.sub(r"(?ms)^```.*?^```", "", path.read_text(encoding="utf-8"))


def _headings(path: Path) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"(?m)^#{1,6} (.+)$", _prose(path))]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_the_readme_is_a_guide_of_fewer_than_4500_words():
    words = len(README.read_text(encoding="utf-8").split())
    assert words < README_MAX_WORDS, f"README.md has {words} words; move reference material to docs/"


def test_the_readme_sections_come_in_the_order_a_newcomer_needs_them():
    sections = [m.group(1).strip() for m in re.finditer(r"(?m)^## (.+)$", _prose(README))]
    missing = [s for s in README_SECTIONS if s not in sections]
    assert not missing, f"README.md lacks the sections {missing}"
    positions = [sections.index(s) for s in README_SECTIONS]
    assert positions == sorted(positions), f"README.md sections out of order: {sections}"


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page: Path):
    broken = []
    for target in LINK.findall(_prose(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no file {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in {_anchor(h) for h in _headings(resolved)}:
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def _pointers() -> list[tuple[str, str, str]]:
    found = []
    for path in CODE:
        for match in POINTER.finditer(path.read_text(encoding="utf-8")):
            for number in SECTION.findall(match.group(2)):
                found.append((str(path.relative_to(ROOT)), match.group(1), number))
    return found


def test_code_points_at_the_protocol_docs():
    assert {doc for _, doc, _ in _pointers()} >= {"gemini-live.md", "twilio-media-streams.md"}


def test_every_section_pointer_in_the_code_leads_to_a_heading():
    broken = []
    for where, doc, number in _pointers():
        page = DOCS / doc
        if not page.exists():
            broken.append(f"{where}: docs/{doc} does not exist")
            continue
        if not any(re.match(rf"{re.escape(number)}[. ]", h) for h in _headings(page)):
            broken.append(f"{where}: docs/{doc} has no heading §{number}")
    assert not broken, "\n".join(broken)


def test_bare_section_numbers_in_a_module_that_cites_one_doc_lead_to_its_headings():
    """`(§12)` in a module whose docstring cites docs/gemini-live.md means that page's §12."""
    broken = []
    for path in CODE:
        text = path.read_text(encoding="utf-8")
        docs = set(re.findall(r"docs/([\w-]+\.md)", text))
        if len(docs) != 1:
            continue
        page = DOCS / docs.pop()
        headings = _headings(page) if page.exists() else []
        for match in re.finditer(r"(?<!RFC 6455 )§(\d+(?:\.\d+)?)", text):
            if not any(re.match(rf"{re.escape(match.group(1))}[. ]", h) for h in headings):
                broken.append(f"{path.relative_to(ROOT)}: §{match.group(1)} is not a heading of docs/{page.name}")
    assert not broken, "\n".join(broken)


def test_no_pointer_leads_outside_the_repository():
    # The reference folder beside the repository and the machine's work folder, spelled in
    # pieces so this line is not itself a pointer outside.
    outside = re.compile("|".join(re.escape(part) for part in ("shared" + "/reference", "/" + "work/")))
    bare = re.compile(r"(?<![\w/])(?:gemini-live|twilio-media-streams)\.md")  # fine within docs/ itself
    me = Path(__file__).resolve()
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in [*CODE, *MARKDOWN, ROOT / "Dockerfile", *sorted((ROOT / "deploy").iterdir())]
        if path.is_file() and path.suffix != ".json" and path != me
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if outside.search(line) or (path.parent != DOCS and bare.search(line))
    ]
    assert not offenders, f"pointers a clone cannot follow: {offenders}"
