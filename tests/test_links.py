"""Every relative link of the documentation resolves.

For README.md and every docs/*.md: each relative link target — ``[text](path)``,
``[text](path#anchor)``, ``[text](#anchor)``, images ``![alt](path)`` and reference definitions
``[name]: path`` — names an existing file or folder (relative to the linking file), and each
``#anchor`` into a Markdown file names one of its headings under GitHub's anchor rules (rendered
heading text lowercased, every character that is not a letter, digit, ``_``, ``-`` or space
dropped, spaces turned into ``-``; a repeated heading gets ``-1``, ``-2``, …) or an explicit
``<a id=…>`` / ``<a name=…>``. Links inside fenced code blocks and code spans are not links.
External links (any ``scheme:``, e.g. http, https, mailto) are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)=[\"']([^\"']+)[\"']", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, line) of every line outside fenced code blocks."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)[0] * len(match.group(1))
        elif fence is not None and match and match.group(1).startswith(fence):
            fence = None
        elif fence is None:
            lines.append((number, line))
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor of a heading's Markdown text (links reduced to their text)."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown file defines: its headings' slugs and explicit ``<a>`` anchors."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        found.update(_EXPLICIT_ANCHOR.findall(line))
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link in a Markdown file, code excluded."""
    out = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        prose = _CODE_SPAN.sub("``", line)
        out.extend((number, target) for target in _INLINE_LINK.findall(prose))
        ref = _REF_DEF.match(prose)
        if ref:
            out.append((number, ref.group(1)))
    return out


def broken_links(path: Path) -> list[str]:
    """One message per relative link of ``path`` whose file or anchor does not exist."""
    problems = []
    cache: dict[Path, set[str]] = {}
    for number, target in links(path):
        if not target or _SCHEME.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path.resolve()
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{number}"
        if not dest.exists():
            problems.append(f"{where}: {target!r}: no such file {dest}")
            continue
        if anchor and dest.is_file() and dest.suffix.lower() == ".md":
            if dest not in cache:
                cache[dest] = anchors(dest)
            if unquote(anchor).lower() not in cache[dest]:
                problems.append(f"{where}: {target!r}: no heading with anchor #{anchor} in {dest.name}")
    return problems


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path):
    problems = broken_links(doc)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_documents_link_to_each_other():
    """The check sees links at all: the README reaches every docs page through a link."""
    targets = {(ROOT / t.partition("#")[0]).resolve() for _, t in links(ROOT / "README.md")
               if not _SCHEME.match(t) and t.partition("#")[0]}
    missing = [p.name for p in DOC_FILES[1:] if p.resolve() not in targets]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_github_slugs():
    assert github_slug("Quick start — two commands") == "quick-start--two-commands"
    assert github_slug("Does it detect? The cross-validated demo") == \
        "does-it-detect-the-cross-validated-demo"
    assert github_slug("Cache contract (`deepfakemae/faces/cache.py`)") == \
        "cache-contract-deepfakemaefacescachepy"
    assert github_slug("Reproducing the paper's tables") == "reproducing-the-papers-tables"
    assert github_slug("See [the design](docs/DESIGN.md)") == "see-the-design"


def test_broken_file_and_anchor_are_reported(tmp_path: Path):
    (tmp_path / "other.md").write_text("# A heading\n\n## Twice\n\n## Twice\n", encoding="utf-8")
    (tmp_path / "img.png").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n"
        "[ok](other.md#a-heading) [ok](other.md#twice-1) ![ok](img.png) [ok](#page)\n"
        "[ext](https://example.com/x.md#nowhere) [mail](mailto:a@b.c) `[code](gone.md)`\n"
        "```\n[fenced](gone.md)\n```\n"
        "[bad file](gone.md) [bad anchor](other.md#no-such) ![bad image](missing.png)\n"
        "[bad self](#nowhere)\n"
        "[ref]: gone-too.md\n",
        encoding="utf-8")
    problems = broken_links(page)
    assert len(problems) == 5, problems
    for expected in ("gone.md", "other.md#no-such", "missing.png", "#nowhere", "gone-too.md"):
        assert any(repr(expected)[1:-1] in p for p in problems), (expected, problems)
