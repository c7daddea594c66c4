"""Every number README.md quotes as a result is read from a committed file under docs/results/.

The result sections (the caption under the README's first figure, "## Studies" and "## Benchmarks") are cut into
blocks (paragraphs and table rows). Each block's source is the docs/results/<dir>/ it links to (a study's REPORT.md,
PREREGISTRATION.md...), else the section's own directory (docs/results/benchmarks/ for the benchmarks); every number
in the block, once citations (years, Fig/Table/Eq/Sec numbers), code spans and link targets are removed, must appear
as a number in one of that directory's text files (REPORT.md, PREREGISTRATION.md, claims.csv, tables/*.csv,
meta.json, benchmarks/*.txt). A number edited by hand, or left behind when a study is re-run, fails here.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
README = ROOT / "README.md"

# (heading that opens the section, heading that closes it, default source directory or None)
SECTIONS = (("## Studies", "### Command line", None), ("## Benchmarks", "## Development", "benchmarks"))
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w])")
LINK_DIR = re.compile(r"docs/results/([\w-]+)/")
CITATION = re.compile(
    r"\b(?:19|20)\d\d\b"  # a year (of a paper)
    r"|\b(?:Figs?|Table|Eq|Sec|Exp)\.? \d+(?:\.\d+)?(?:[-/]\d+)?(?:[a-z](?:/[a-z])?)?"  # a paper's figure, table...
)
TEXT_SUFFIXES = {".md", ".csv", ".json", ".txt"}


def _strip(block: str) -> str:
    block = re.sub(r"\]\([^)]*\)", "]", block)  # link targets
    block = re.sub(r"`[^`]*`", " ", block)  # code spans: commands, names, flags
    return CITATION.sub(" ", block)


def _numbers(text: str) -> set[str]:
    return set(NUMBER.findall(text))


@functools.cache
def _corpus(directory: str) -> frozenset[str]:
    path = RESULTS / directory
    found: set[str] = set()
    for f in path.rglob("*"):
        if f.is_file() and f.suffix in TEXT_SUFFIXES:
            found |= _numbers(f.read_text(errors="replace"))
    return frozenset(found)


def _section(text: str, start: str, end: str) -> str:
    """The text between the heading line that starts with `start` and the next one that starts with `end`."""
    m = re.search(rf"^{re.escape(start)}\b.*$", text, re.M)
    assert m, f"README.md has no heading {start!r}"
    n = re.compile(rf"^{re.escape(end)}\b", re.M).search(text, m.end())
    assert n, f"README.md has no heading {end!r} after {start!r}"
    return text[m.end() : n.start()]


def _blocks():
    text = README.read_text()
    # the caption of the README's first figure (the main study's result)
    caption = re.search(r"^!\[[^\]]*\]\(docs/results/([\w-]+)/[^)]*\)\n\n(\*.*?\*)\n", text, re.M | re.S)
    assert caption, "README.md must open with a study figure and its italic caption"
    yield "caption", caption.group(1), caption.group(2)
    for start, end, default in SECTIONS:
        body = _section(text, start, end)
        for para in re.split(r"\n\s*\n", body):
            lines = para.splitlines()
            rows = lines if lines and all(line.startswith("|") for line in lines) else [para]
            for row in rows:
                if row.startswith("```") or re.fullmatch(r"\|[-| ]+\|", row.strip()):
                    continue
                dirs = sorted(set(LINK_DIR.findall(row)) - {"figures"})
                yield start, (dirs[0] if len(dirs) == 1 else default if not dirs else None), row


BLOCKS = list(_blocks())


def test_result_sections_exist_and_have_numbers():
    assert len(BLOCKS) > 10
    assert sum(len(_numbers(_strip(b))) for _, _, b in BLOCKS) > 50


@pytest.mark.parametrize(("where", "source", "block"), BLOCKS, ids=[f"{w}:{i}" for i, (w, _, _) in enumerate(BLOCKS)])
def test_every_quoted_number_is_in_the_committed_results(where, source, block):
    numbers = _numbers(_strip(block))
    if not numbers:
        return
    assert source is not None, (
        f"README block in {where!r} quotes numbers but links no one docs/results/<dir>/: {block[:120]!r}"
    )
    assert (RESULTS / source).is_dir(), f"README block links docs/results/{source}/, which does not exist"
    missing = sorted(numbers - _corpus(source), key=float)
    assert not missing, (
        f"README block in {where!r} quotes {missing}, found in no file under docs/results/{source}/: {block[:160]!r}"
    )


def test_the_checker_catches_a_number_that_is_not_in_the_results():
    # a self-test: a number edited by hand is reported, citations and code spans are not numbers
    assert _numbers(_strip("He et al. 2015, Fig 3: 0.458 in `make study-vgg`")) == {"0.458"}
    assert "987654.321" not in _corpus("vgg_depth")
