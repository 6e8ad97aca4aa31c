"""The README as a user meets it: its set-up commands are the ones CI runs, every Python snippet
in it runs as written (on CPU), and its links (and the research log's) lead somewhere."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LOG = ROOT / "docs" / "research_log.md"
SETUP = [
    'pip install torch==2.14.1 torchvision==0.29.1 -e ".[dev,deploy,ultralytics]" && python -m lightning_ptq +recipe=yolo_w4a4',
    "python -m pytest -q",
]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every top-level fenced block (not the indented ones inside lists)."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def python_blocks() -> list[str]:
    return [body for lang, body in fenced_blocks(README.read_text()) if lang == "python"]


def test_first_block_is_the_two_setup_commands():
    lang, body = fenced_blocks(README.read_text())[0]
    assert lang == "bash"
    assert body.splitlines() == SETUP


def test_ci_runs_the_readme_commands():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert any(line in ("python3 -m pytest -q", "python -m pytest -q") for line in lines), lines
    install = SETUP[0].split(" && ")[0]
    assert any(line.endswith(install) and line.split(install)[0] in ("", "python3 -m ", "python -m ")
               for line in lines), (install, lines)


def test_readme_has_python_snippets():
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_python_snippet_runs(index, tmp_path):
    """Each snippet in its own interpreter and empty folder, on CPU, as a user would paste it."""
    code = python_blocks()[index]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"README python block {index} failed:\n{code}\n{result.stderr[-4000:]}"


def anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of ``text`` (outside fenced blocks)."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", text).splitlines():
        m = re.match(r"#{1,6} (.*)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("doc", [README, LOG], ids=lambda p: p.name)
def test_links_resolve(doc):
    """Relative links point at files that exist, and #anchors at headings that exist."""
    text = doc.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", text)):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(target)
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file.read_text())):
            broken.append(target)
    assert not broken, f"{doc.name}: broken links {broken}"
