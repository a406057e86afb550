"""Fetch transformers' own common model tests for the installed transformers release.

The sdist of the installed version is downloaded from the package registry (pip download
--no-binary :all: --no-deps transformers==<version>) and its top-level ``tests/`` folder is unpacked
as the package ``transformers_tests`` under ``.cache/transformers_tests/<version>/`` (renamed, so that
it does not clash with this repository's ``tests``). tests/test_transformers_common.py runs
``ModelTesterMixin`` from it against the hope_hf models. Safe to run again: a folder already there is
kept.

The sdist ships ``tests/*.py`` but not its ``exporters/`` and ``generation/`` subpackages, which
``test_modeling_common.py`` imports. They are written here as empty mixins, so those two suites do
not run (generation is covered by tests/test_modeling.py and tests/test_in_context.py).
"""

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MISSING_FROM_SDIST = {
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
}
NOTE = '"""Not in the transformers sdist; written by scripts/fetch_transformers_tests.py (its docstring says why)."""\n\n\n'


def tests_folder(version: str) -> Path:
    return ROOT / ".cache" / "transformers_tests" / version


def fetch(version: str) -> Path:
    target = tests_folder(version)
    package = target / "transformers_tests"
    if (package / "test_modeling_common.py").exists():
        return target
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-binary", ":all:",
             "--no-deps", "-d", download, f"transformers=={version}"],
            check=True,
        )
        [sdist] = Path(download).glob("transformers-*.tar.gz")
        prefix = f"transformers-{version}/tests/"
        package.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                if member.isfile() and member.name.startswith(prefix):
                    relative = member.name[len(prefix):]
                    destination = package / relative
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    destination.write_bytes(archive.extractfile(member).read())
    for relative, source in MISSING_FROM_SDIST.items():
        path = package / relative
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / "__init__.py").touch()
            path.write_text(NOTE + source)
    (package / "__init__.py").touch()
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", help="transformers version (default: the installed one)")
    args = parser.parse_args()
    if args.version is None:
        import transformers

        args.version = transformers.__version__
    print(fetch(args.version))


if __name__ == "__main__":
    main()
