"""Domains for continual pretraining (hope_hf.training.domains): standard-library Python source
from a fixed list, deterministic train / validation / test blocks sharing no document, test splits
of at least 8,192 SmolLM2 tokens, clear errors."""

import re

import pytest

from hope_hf.training import train_bpe_tokenizer
from hope_hf.training.domains import (
    DOMAINS,
    TEST_TOKENS,
    SPLITS,
    STDLIB_FILES,
    domain_documents,
    domain_splits,
    load_domain,
    stdlib_directory,
    stdlib_source_documents,
    text_documents,
)


def ids(blocks) -> list[list[int]]:
    return [block["input_ids"].tolist() for block in blocks]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(domain_documents("english")[:5] + stdlib_source_documents()[:3], 300)


def test_stdlib_files_are_a_sorted_fixed_list_read_in_that_order():
    assert list(STDLIB_FILES) == sorted(set(STDLIB_FILES))
    documents = stdlib_source_documents()
    root = stdlib_directory()
    present = [name for name in STDLIB_FILES if (root / name).is_file()]
    assert documents == [(root / name).read_text(encoding="utf-8") for name in present]
    assert any("def " in d for d in documents) and any("class " in d for d in documents)


def test_missing_stdlib_files_are_named_and_too_few_fail(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    with pytest.warns(UserWarning, match="skipped: c.py"):
        assert stdlib_source_documents(["b.py", "c.py", "a.py"], root=tmp_path, min_files=2) == ["x = 1\n", "y = 2\n"]
    with pytest.warns(UserWarning), pytest.raises(FileNotFoundError, match=r"only 2 of 3 .*need 3.*missing: c.py"):
        stdlib_source_documents(["a.py", "b.py", "c.py"], root=tmp_path, min_files=3)


def test_unknown_domain_names_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed: spanish, english, code"):
        domain_documents("french")


def test_splits_are_deterministic_and_share_no_document(tokenizer):
    # every document carries a unique marker, so a block's markers say which documents it came from
    documents = [f"document{i:03d} " + "lorem ipsum dolor sit amet " * 6 for i in range(60)]
    splits = domain_splits(documents, tokenizer, block_size=16, seed=0, min_blocks={"validation": 2, "test": 5})
    again = domain_splits(documents, tokenizer, block_size=16, seed=0)
    assert list(splits) == list(SPLITS) == ["train", "validation", "test"]
    assert all(ids(splits[name]) == ids(again[name]) and len(splits[name]) > 0 for name in SPLITS)

    def markers(blocks) -> set[str]:
        return {m for block in ids(blocks) for m in re.findall(r"document\d{3}", tokenizer.decode(block))}

    found = {name: markers(splits[name]) for name in SPLITS}
    assert all(found.values())
    assert not found["train"] & found["validation"] and not found["train"] & found["test"]
    assert not found["validation"] & found["test"]
    assert len(found["test"]) > len(found["validation"])  # test 15%, validation 5% of the documents
    other = domain_splits(documents, tokenizer, 16, seed=1)
    assert ids(other["test"]) != ids(splits["test"])


def test_code_domain_packs_into_blocks(tokenizer):
    splits = domain_splits(stdlib_source_documents(), tokenizer, block_size=64, min_blocks={"validation": 8, "test": 8})
    assert all(len(block) == 64 for name in SPLITS for block in ids(splits[name]))


@pytest.mark.parametrize("kwargs, message", [
    ({"min_blocks": {"test": 0}}, r"min_blocks\['test'\] must be >= 1"),
    ({"min_blocks": {"dev": 2}}, "unknown split 'dev'"),
    ({"test_fraction": 1.5}, r"test_fraction must be in \(0, 1\)"),
    ({"validation_fraction": 0.0}, r"validation_fraction must be in \(0, 1\)"),
    ({"validation_fraction": 0.5, "test_fraction": 0.5}, "validation_fraction \\+ test_fraction must be < 1"),
    ({"min_blocks": {"test": 10_000}}, r"the test split .* fewer than the 10000 asked for: raise test_fraction"),
    ({"min_blocks": {"validation": 10_000}}, r"the validation split .* fewer than the 10000 asked for: raise validation"),
])
def test_bad_arguments_are_rejected_clearly(tokenizer, kwargs, message):
    documents = ["some words here " * 20 for _ in range(20)]
    with pytest.raises(ValueError, match=message):
        domain_splits(documents, tokenizer, block_size=16, **kwargs)


def test_too_few_documents_are_rejected(tokenizer, tmp_path):
    path = tmp_path / "two.txt"
    path.write_text("only one document\n\n   \nand a second\n")
    assert text_documents(path) == ["only one document", "and a second"]
    with pytest.raises(ValueError, match="at least three non-empty documents"):
        domain_splits(text_documents(path), tokenizer, block_size=4)
    with pytest.raises(ValueError, match="only 1 of 5 documents held out"):
        domain_splits(["a b c d e f"] * 5, tokenizer, block_size=2)


def test_default_domains_hold_at_least_8192_test_tokens_with_smollm2s_tokenizer():
    """The counts docs/continual.md gives: SmolLM2's tokenizer, blocks of 128, default fractions."""
    from hope_hf.data import smollm2_gguf_path
    from hope_hf.modeling.llama_loading import load_tokenizer

    tokenizer = load_tokenizer(smollm2_gguf_path())
    blocks = {name: {split: len(b) for split, b in load_domain(name, tokenizer, 128).items()} for name in DOMAINS}
    assert all(counts["test"] * 128 >= TEST_TOKENS and counts["validation"] >= 8 for counts in blocks.values())
    assert blocks == {"spanish": {"train": 559, "validation": 34, "test": 129},
                      "english": {"train": 452, "validation": 22, "test": 86},
                      "code": {"train": 2546, "validation": 191, "test": 519}}


@pytest.mark.parametrize("name", ["spanish", "english"])
def test_domain_held_out_chapters_include_the_training_pipelines_held_out_chapters(name):
    """The main job (domains: validation + test, 20%) never trains on the chapters build_datasets
    holds out (5%, the offline lm-eval tasks' text): both split the same documents with seed 0,
    and the permutation is shared, so the smaller held-out set is inside the larger one."""
    from datasets import Dataset

    from hope_hf.data import sample_text_path
    from hope_hf.training.data import load_documents
    from hope_hf.training.domains import TEST_FRACTION, TEXT_DOMAINS, VALIDATION_FRACTION

    path = sample_text_path(TEXT_DOMAINS[name])
    pipeline = load_documents([str(path)]).train_test_split(test_size=0.05, seed=0)["test"]["text"]
    held_out = VALIDATION_FRACTION + TEST_FRACTION
    domain = Dataset.from_dict({"text": domain_documents(name)}).train_test_split(test_size=held_out, seed=0)
    assert pipeline and set(pipeline) <= set(domain["test"]["text"])
    assert not set(pipeline) & set(domain["train"]["text"])
