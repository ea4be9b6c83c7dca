"""What users read (README, docs/, examples, --help) points at files that exist and says nothing about the
project's own machines: no sibling data folder, no lent GPU, no remote-run budget."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from l2ood.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
BASE = "https://github.com/l2ood/l2ood/blob/main/"
INTERNAL = re.compile(r"\.\./shared|shared/data|/work/|\blent\b|budget_left|remote-run|device call|\.device/|"
                      r"farm-studio|\.library")


def _user_texts() -> dict[str, str]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*")),
             *sorted((ROOT / "apidocs").glob("*.md"))]
    texts = {str(f.relative_to(ROOT)): f.read_text() for f in files if f.is_file() and f.suffix in (".md", ".py")}
    ap = build_parser()
    texts["l2ood --help"] = ap.format_help()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        texts[f"l2ood {name} --help"] = p.format_help()
    return texts


def test_readme_links_are_absolute_and_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        assert link.startswith(("https://", "http://", "#")), f"relative README link {link} breaks on a package page"
        if link.startswith(BASE):
            assert (ROOT / link.removeprefix(BASE).split("#")[0]).exists(), link


@pytest.mark.parametrize("name", sorted(_user_texts()))
def test_user_text_has_no_internal_setup(name: str) -> None:
    text = _user_texts()[name]
    hits = [m.group(0) for m in INTERNAL.finditer(text)]
    assert not hits, f"{name} mentions the project's own setup: {hits}"
