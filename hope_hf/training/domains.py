"""Text domains for continual pretraining, available offline on every machine.

A domain is a list of documents: the Spanish and English Bible samples shipped in hope_hf/data
(one chapter per document), and Python source from the running interpreter's own standard
library (one file per document, from a fixed, sorted list of names). ``domain_blocks`` splits the
documents into training and held-out ones with a fixed seed and packs each side into blocks, so
the held-out blocks are the same on every run and share no document with the training blocks.
"""

import sysconfig
import warnings
from pathlib import Path

from datasets import Dataset

from ..data import sample_text_path
from .data import pack_blocks

# Pure-Python modules present in the standard library of CPython 3.9 to 3.13 (sorted, fixed:
# not a glob, whose result would change between Python versions).
STDLIB_FILES = (
    "argparse.py", "base64.py", "bisect.py", "calendar.py", "cmd.py", "colorsys.py", "configparser.py",
    "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "difflib.py", "enum.py", "filecmp.py", "fnmatch.py",
    "fractions.py", "ftplib.py", "functools.py", "getopt.py", "gettext.py", "glob.py", "gzip.py", "heapq.py",
    "hmac.py", "inspect.py", "ipaddress.py", "json/decoder.py", "json/encoder.py", "locale.py", "mimetypes.py",
    "numbers.py", "operator.py", "optparse.py", "pprint.py", "queue.py", "quopri.py", "random.py", "sched.py",
    "secrets.py", "selectors.py", "shlex.py", "shutil.py", "smtplib.py", "statistics.py", "string.py",
    "tabnanny.py", "tempfile.py", "textwrap.py", "threading.py", "tokenize.py", "trace.py", "uuid.py",
    "weakref.py", "zipapp.py",
)
MIN_STDLIB_FILES = 20
TEXT_DOMAINS = {"spanish": "rv1909_es_sample", "english": "web_en_sample"}
DOMAINS = (*TEXT_DOMAINS, "code")


def stdlib_directory() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_documents(files=STDLIB_FILES, root: str | Path | None = None,
                            min_files: int = MIN_STDLIB_FILES) -> list[str]:
    """The source of each named standard-library file, in sorted order. A missing file is skipped
    with a warning naming it; fewer than ``min_files`` left is an error."""
    root = Path(root) if root is not None else stdlib_directory()
    names = sorted(set(files))
    found = [name for name in names if (root / name).is_file()]
    missing = [name for name in names if name not in found]
    if missing:
        warnings.warn(f"standard library files not found under {root}, skipped: {', '.join(missing)}", stacklevel=2)
    if len(found) < min_files:
        raise FileNotFoundError(f"only {len(found)} of {len(names)} standard library files found under {root} "
                                f"(need {min_files}); missing: {', '.join(missing)}")
    return [(root / name).read_text(encoding="utf-8") for name in found]


def text_documents(path: str | Path) -> list[str]:
    """One document per non-empty line of a text file."""
    return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def domain_documents(name: str) -> list[str]:
    if name == "code":
        return stdlib_source_documents()
    if name in TEXT_DOMAINS:
        return text_documents(sample_text_path(TEXT_DOMAINS[name]))
    raise ValueError(f"unknown domain {name!r}; allowed: {', '.join(DOMAINS)}")


def domain_blocks(documents: list[str], tokenizer, block_size: int, held_out_blocks: int,
                  held_out_fraction: float = 0.1, seed: int = 0):
    """(training blocks, the first ``held_out_blocks`` held-out blocks), as torch-formatted
    datasets. Documents are split (seeded, deterministic) before packing: no document, hence no
    block, is on both sides."""
    if held_out_blocks < 1:
        raise ValueError(f"held_out_blocks must be >= 1, got {held_out_blocks}")
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    documents = [d for d in documents if d.strip()]
    if len(documents) < 2:
        raise ValueError(f"need at least two non-empty documents to hold some out, got {len(documents)}")
    split = Dataset.from_dict({"text": documents}).train_test_split(test_size=held_out_fraction, seed=seed)
    train, held_out = (pack_blocks(split[side], tokenizer, block_size) for side in ("train", "test"))
    if len(held_out) < held_out_blocks:
        raise ValueError(f"the held-out documents give {len(held_out)} blocks of {block_size} tokens, fewer than the "
                         f"{held_out_blocks} asked for: raise held_out_fraction or lower block_size")
    if len(train) == 0:
        raise ValueError(f"the training documents hold fewer than block_size={block_size} tokens")
    return train.with_format("torch"), held_out.select(range(held_out_blocks)).with_format("torch")


def load_domain(name: str, tokenizer, block_size: int, held_out_blocks: int, held_out_fraction: float = 0.1, seed: int = 0):
    """(training blocks, held-out blocks) of a named domain: spanish, english or code."""
    return domain_blocks(domain_documents(name), tokenizer, block_size, held_out_blocks, held_out_fraction, seed)


__all__ = ["DOMAINS", "STDLIB_FILES", "domain_blocks", "domain_documents", "load_domain", "stdlib_source_documents",
           "text_documents"]
