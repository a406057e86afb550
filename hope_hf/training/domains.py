"""Text domains for continual pretraining, available offline on every machine.

A domain is a list of documents: the Spanish and English Bible samples shipped in hope_hf/data
(one chapter per document), and Python source from the running interpreter's own standard
library (one file per document, from a fixed, sorted list of names). ``domain_splits`` splits the
documents into train, validation and test ones with a fixed seed and packs each split into
blocks, so the validation and test blocks are the same on every run and no document is in two
splits. Validation is for choices (recipes, rates, curves along training), test for the numbers
reported. With SmolLM2's tokenizer and blocks of 128 tokens, the default fractions (validation
5%, test 15%) give every default domain at least 86 test blocks (11,008 tokens) and 22
validation blocks (docs/continual.md has the counts).
"""

import math
import sysconfig
import warnings
from pathlib import Path

import torch
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


VALIDATION_FRACTION = 0.05
TEST_FRACTION = 0.15
TEST_TOKENS = 8192  # test-split tokens per domain that the main job and the forgetting study report on
SPLITS = ("train", "validation", "test")


def split_documents(documents: list[str], validation_fraction: float = VALIDATION_FRACTION,
                    test_fraction: float = TEST_FRACTION, seed: int = 0) -> dict:
    """{"train", "validation", "test"}: the non-empty documents of each split as a dataset with a
    "text" column (the split ``domain_splits`` packs)."""
    documents = [d for d in documents if d.strip()]
    if len(documents) < 3:
        raise ValueError(f"need at least three non-empty documents for train, validation and test, got {len(documents)}")
    held = validation_fraction + test_fraction
    first = Dataset.from_dict({"text": documents}).train_test_split(test_size=held, seed=seed)
    if len(first["test"]) < 2:
        raise ValueError(f"only {len(first['test'])} of {len(documents)} documents held out: raise validation_fraction "
                         f"or test_fraction, or give more documents")
    # test_fraction / held of the held-out documents, rounded up (as train_test_split rounds a
    # fraction), but at least one left for validation
    test_count = min(len(first["test"]) - 1, math.ceil(test_fraction / held * len(first["test"])))
    second = first["test"].train_test_split(test_size=test_count, seed=seed)
    return {"train": first["train"], "validation": second["train"], "test": second["test"]}


def validation_text_ids(source: str, tokenizer, tokens: int, seed: int = 0) -> torch.Tensor:
    """(tokens,) ids: the start of the validation documents of a named domain or .txt file (one
    document a line), joined in order with a newline between, for choices made by reading
    (``hope_hf.test_time.calibrate``)."""
    documents = domain_documents(source) if source in DOMAINS else text_documents(source)
    text = "\n".join(split_documents(documents, seed=seed)["validation"]["text"])
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if len(ids) < tokens:
        raise ValueError(f"domain {source!r}: its validation documents hold {len(ids)} tokens, fewer than the {tokens} asked for")
    return ids[:tokens]


def domain_splits(documents: list[str], tokenizer, block_size: int, validation_fraction: float = VALIDATION_FRACTION,
                  test_fraction: float = TEST_FRACTION, seed: int = 0, min_blocks: dict | None = None) -> dict:
    """{"train", "validation", "test"}: each split's blocks as a torch-formatted dataset.

    Documents are split (seeded, deterministic) before packing, so no document, hence no block,
    is in two splits: first train against held-out (validation_fraction + test_fraction of the
    documents, the same permutation as ``build_datasets``' split with this seed, so its smaller
    held-out set lies inside this one), then the held-out documents into validation and test.
    ``min_blocks`` ({split: n}, train defaults to 1): fewer blocks in a split is a ValueError
    naming it."""
    for name, fraction in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0 < fraction < 1:
            raise ValueError(f"{name} must be in (0, 1), got {fraction}")
    if validation_fraction + test_fraction >= 1:
        raise ValueError(f"validation_fraction + test_fraction must be < 1, got {validation_fraction + test_fraction:g}")
    minimum = {"train": 1, "validation": 1, "test": 1, **(min_blocks or {})}
    for name, count in minimum.items():
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r} in min_blocks; allowed: {', '.join(SPLITS)}")
        if count < 1:
            raise ValueError(f"min_blocks[{name!r}] must be >= 1, got {count}")
    sides = split_documents(documents, validation_fraction, test_fraction, seed)
    splits = {name: pack_blocks(sides[name], tokenizer, block_size) for name in SPLITS}
    for name in SPLITS:
        if len(splits[name]) < minimum[name]:
            raise ValueError(f"the {name} split ({len(sides[name])} documents) gives {len(splits[name])} blocks of "
                             f"{block_size} tokens, fewer than the {minimum[name]} asked for: "
                             f"{'lower the fractions' if name == 'train' else 'raise ' + name + '_fraction'} or lower block_size")
    return {name: blocks.with_format("torch") for name, blocks in splits.items()}


def load_domain(name: str, tokenizer, block_size: int, **kwargs) -> dict:
    """{"train", "validation", "test"} blocks of a named domain (spanish, english or code);
    ``kwargs`` go to ``domain_splits``."""
    return domain_splits(domain_documents(name), tokenizer, block_size, **kwargs)


def domain_name(source: str) -> str:
    """A named domain's name, or a .txt file's stem."""
    return source if source in DOMAINS else Path(source).stem


def new_and_old_domains(sources: list[str], tokenizer, block_size: int, eval_blocks: int, test_tokens: int,
                        seed: int = 0):
    """(training blocks of the first domain, {domain: its first ``eval_blocks`` validation blocks},
    {domain: its first ``test_tokens`` test tokens, in blocks}) for named domains or .txt files
    (one document a line), the first one the new domain."""
    validation, test, new_train = {}, {}, None
    min_blocks = {"validation": eval_blocks, "test": math.ceil(test_tokens / block_size)}
    for source in sources:
        if source not in DOMAINS and not Path(source).is_file():
            raise FileNotFoundError(f"domain {source!r} is neither one of {', '.join(DOMAINS)} nor a file")
        documents = domain_documents(source) if source in DOMAINS else text_documents(source)
        try:
            splits = domain_splits(documents, tokenizer, block_size, seed=seed, min_blocks=min_blocks)
        except ValueError as error:
            raise ValueError(f"domain {source!r}: {error}") from error
        validation[domain_name(source)] = splits["validation"].select(range(eval_blocks))
        test[domain_name(source)] = splits["test"].select(range(min_blocks["test"]))
        new_train = splits["train"] if new_train is None else new_train
    return new_train, validation, test


__all__ = ["DOMAINS", "SPLITS", "STDLIB_FILES", "TEST_FRACTION", "TEST_TOKENS", "VALIDATION_FRACTION", "domain_documents",
           "domain_name", "domain_splits", "load_domain", "new_and_old_domains", "split_documents", "stdlib_source_documents",
           "text_documents", "validation_text_ids"]
