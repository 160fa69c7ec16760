"""The README's and docs' examples that need timm (fenced ``py``; the main suite runs the ``python`` ones)."""

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(page, i, block) for page in PAGES
          for i, block in enumerate(re.findall(r"```py\n(.*?)```", page.read_text(), flags=re.S))]


def test_the_timm_examples_are_found():
    assert {page.name for page, _, _ in BLOCKS} >= {"README.md", "interop.md"}


@pytest.mark.parametrize("page,index,block", BLOCKS, ids=[f"{p.name}-{i}" for p, i, _ in BLOCKS])
def test_timm_example_runs(page, index, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(textwrap.dedent(block), f"{page.name}[py block {index}]", "exec"), {"__name__": "__docs__"})
