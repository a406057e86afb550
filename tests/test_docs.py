"""Every code block in docs/*.md marked <!-- runnable --> runs as written (README.md: test_readme.py);
the design document is cited by its path; relative links in the docs resolve."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCKS = [(page.name, i, block) for page in sorted(DOCS.glob("*.md"))
          for i, block in enumerate(re.findall(r"<!-- runnable -->\s*```python\n(.*?)```", page.read_text(), re.DOTALL))]


def test_docs_have_runnable_examples():
    pages = {page for page, _, _ in BLOCKS}
    assert {"peft.md", "trainer.md", "distributed.md", "hub.md"} <= pages, pages


@pytest.mark.parametrize("page,index,block", BLOCKS, ids=[f"{page}:{i}" for page, i, _ in BLOCKS])
def test_docs_block_runs_as_written(page, index, block, tmp_path):
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), f"an example in docs/{page} should print what it shows"


ROOT = DOCS.parent
DESIGN_NAME = "DESIGN" + ".md"  # spelled in two parts so that this file does not mention it
TEXT_SUFFIXES = {".py", ".md", ".sh", ".txt", ".yaml", ".yml", ".toml", ".cfg", ".json", ".jsonl"}


def _text_files():
    for folder in ("hope_hf", "scripts", "evaluation", "tests", "docs"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in TEXT_SUFFIXES and "__pycache__" not in path.parts:
                yield path
    yield ROOT / "README.md"


def test_design_is_cited_as_docs_design_md():
    """The design document is docs/design.md; a citation of a section names one that exists."""
    headings = set(re.findall(r"^#+ (.+?)\s*$", (DOCS / "design.md").read_text(), re.MULTILINE))
    stale, missing = [], []
    for path in _text_files():
        text = path.read_text(errors="replace")
        where = str(path.relative_to(ROOT))
        if DESIGN_NAME in text:
            stale.append(where)
        missing += [f"{where}: {name!r}" for name in re.findall(r'docs/design\.md, "([^"]+)"', text) if name not in headings]
    assert not stale, f"cite docs/design.md instead of {DESIGN_NAME} in {stale}"
    assert not missing, f"sections not in docs/design.md (headings: {sorted(headings)}): {missing}"


def test_relative_markdown_links_resolve():
    """Every relative link in docs/*.md and README.md points to a file that exists."""
    broken = []
    for page in [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL, or an anchor in the same page
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_every_experiment_is_in_the_experiments_table():
    """docs/experiments.md names every committed result file and only runner modules that exist."""
    import importlib.util

    table = (DOCS / "experiments.md").read_text()
    results = DOCS.parent / "evaluation" / "results"
    missing = sorted({p.stem for p in results.iterdir() if p.suffix in (".json", ".png", ".jsonl")}
                     - set(re.findall(r"`([\w.-]+)`", table)))
    assert not missing, f"result files not in docs/experiments.md: {missing}"
    modules = set(re.findall(r"python -m (evaluation(?:\.\w+)+)", table))
    assert len(modules) >= 10
    for module in sorted(modules):
        assert importlib.util.find_spec(module) is not None, module


def test_every_repository_path_named_in_code_and_docs_exists():
    """A path such as evaluation/lib/results.py named in a tracked file exists (relative to the root
    or to the naming file); the public Hope port's own config files are the only outside names."""
    import subprocess

    root = DOCS.parent
    port_files = {"configs/pilot.yaml", "configs/hope/pilot_selfmod.yaml"}  # in the port's checkout, not here
    pattern = re.compile(r"(?<![\w/.-])((?:hope_hf|evaluation|scripts|docs|tests|configs)/[\w./-]*\w"
                         r"\.(?:py|md|json|png|yaml|sh|txt|xz|jsonl))")
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    missing = []
    for name in tracked:
        if not name.endswith((".py", ".md", ".sh", ".yaml", ".toml")):
            continue
        for path in pattern.findall((root / name).read_text(errors="replace")):
            if path not in port_files and not (root / path).exists() and not ((root / name).parent / path).exists():
                missing.append(f"{name}: {path}")
    assert not missing, missing
