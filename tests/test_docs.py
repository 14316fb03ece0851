"""The docs a newcomer walks: every relative link and `#anchor` in README.md and docs/*.md
resolves (files relative to the page, anchors to a heading of the target page as GitHub names
it, or to an explicit `<a id=...>` / `<a name=...>`), and README.md stays a landing page of at
most 400 lines. External http(s) links are not fetched."""

from __future__ import annotations

import re
import shutil
import unicodedata
from pathlib import Path

import pytest

from tests.conftest import ROOT

README_MAX_LINES = 400
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target "title") and ![alt](target); text may hold one level of brackets ([`a`](b))
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HTML_ANCHOR = re.compile(r"<a\s+[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_HTML_LINK = re.compile(r"<(?:a|img)\s+[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (links and headings there are code, not markdown)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """A heading's anchor as GitHub computes it: the rendered text (code backticks, emphasis and
    link targets dropped), lower-cased, punctuation other than `-` and `_` removed, spaces to `-`."""
    text = _CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link shows its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags render as nothing
    text = text.replace("*", "").lower()
    kept = "".join(c for c in text if c in "-_ " or c.isalnum() or unicodedata.category(c).startswith("M"))
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a page offers: its headings (a repeated heading gets -1, -2, ...) and its
    explicit `<a id=...>` / `<a name=...>` tags."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose_lines(text):
        found.update(_HTML_ANCHOR.findall(line))
        match = _HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> list[str]:
    """The link targets of a page (inline, reference-style and HTML), outside code."""
    targets = []
    for line in _prose_lines(text):
        prose = _CODE_SPAN.sub("", line)
        targets += _INLINE_LINK.findall(prose) + _HTML_LINK.findall(prose)
        reference = _REFERENCE.match(prose)
        if reference:
            targets.append(reference.group(1))
    return targets


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` that lead nowhere: a missing file, or an anchor that is not
    a heading (or explicit anchor) of the target page. External links are not checked."""
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{page.name}: {target} (no file {path})")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination.read_text(encoding="utf-8")):
            broken.append(f"{page.name}: {target} (no heading #{anchor} in {destination.name})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_code_block_is_closed(page):
    """An unclosed fence would turn the rest of the page into code, and hide its links from the check."""
    fences = [line for line in page.read_text(encoding="utf-8").splitlines() if _FENCE.match(line)]
    assert len(fences) % 2 == 0


def test_readme_is_a_landing_page():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move the detail to a page under docs/"


def test_every_docs_page_is_linked_from_the_readme():
    readme = links((ROOT / "README.md").read_text(encoding="utf-8"))
    linked = {target.partition("#")[0] for target in readme}
    assert [p.name for p in PAGES[1:] if f"docs/{p.name}" not in linked] == []


def test_anchors_are_named_the_github_way():
    page = "\n".join(
        [
            "# osp — Open-Sora-Plan v1.1.0 as real software",
            "## `osp vae`: the CausalVideoVAE",
            "## The built-in model: `builtin:shapes`",
            "### Speed: caching, attention backends, compile",
            "## Notes",
            "```bash",
            "# not a heading: a comment in code",
            "```",
            "## Notes",
            "## Notes",
            "### snake_case and **bold** and [a link](x.md)",
            '<a id="kept-as-written"></a>',
        ]
    )
    assert anchors(page) == {
        "osp--open-sora-plan-v110-as-real-software",
        "osp-vae-the-causalvideovae",
        "the-built-in-model-builtinshapes",
        "speed-caching-attention-backends-compile",
        "notes",
        "notes-1",
        "notes-2",
        "snake_case-and-bold-and-a-link",
        "kept-as-written",
    }


def test_the_checker_finds_broken_links(tmp_path):
    """A small bad page: a missing file, a missing anchor on this page and on another page; the
    good links, a link inside code and an external link pass."""
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    bad = tmp_path / "bad.md"
    bad.write_text(
        "# Bad page\n\n"
        "[fine](other.md#a-section) [fine too](#bad-page) [external](https://example.com/#nowhere)\n"
        "[gone](missing.md) [no anchor](#nowhere) [no anchor there](other.md#b-section)\n"
        "`[in code](missing-too.md)`\n\n```\n[in a block](missing-three.md)\n```\n"
    )
    assert broken_links(bad) == [
        "bad.md: missing.md (no file missing.md)",
        "bad.md: #nowhere (no heading #nowhere in bad.md)",
        "bad.md: other.md#b-section (no heading #b-section in other.md)",
    ]


def test_a_broken_link_in_a_copy_of_the_docs_fails(tmp_path):
    """The real pages, copied: clean as they are, and a link to a heading that a page lost is found."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    for entry in ROOT.iterdir():  # what the pages link to, beside them
        if entry.name not in ("README.md", "docs"):
            (tmp_path / entry.name).symlink_to(entry)
    readme = tmp_path / "README.md"
    assert broken_links(readme) == []
    readme.write_text(readme.read_text(encoding="utf-8") + "\n[sampling](docs/sampling.md#no-such-section)\n", encoding="utf-8")
    assert broken_links(readme) == ["README.md: docs/sampling.md#no-such-section (no heading #no-such-section in sampling.md)"]
