"""Domains for continual pretraining (hope_hf.training.domains): standard-library Python source
from a fixed list, deterministic held-out blocks disjoint from the training ones, clear errors."""

import re

import pytest

from hope_hf.training import train_bpe_tokenizer
from hope_hf.training.domains import (
    STDLIB_FILES,
    domain_blocks,
    domain_documents,
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


def test_held_out_blocks_are_deterministic_and_share_no_document_with_training(tokenizer):
    # every document carries a unique marker, so a block's markers say which documents it came from
    documents = [f"document{i:03d} " + "lorem ipsum dolor sit amet " * 6 for i in range(60)]
    train, held_out = domain_blocks(documents, tokenizer, block_size=16, held_out_blocks=5, seed=0)
    again_train, again_held_out = domain_blocks(documents, tokenizer, block_size=16, held_out_blocks=5, seed=0)
    assert len(held_out) == 5 and ids(held_out) == ids(again_held_out) and ids(train) == ids(again_train)

    def markers(blocks) -> set[str]:
        return {m for block in ids(blocks) for m in re.findall(r"document\d{3}", tokenizer.decode(block))}

    assert markers(held_out) and not markers(held_out) & markers(train)
    assert ids(domain_blocks(documents, tokenizer, 16, held_out_blocks=1, seed=0)[1]) == ids(held_out)[:1]
    other = domain_blocks(documents, tokenizer, 16, held_out_blocks=5, seed=1)[1]
    assert ids(other) != ids(held_out)


def test_code_domain_packs_into_held_out_blocks(tokenizer):
    _, held_out = domain_blocks(stdlib_source_documents(), tokenizer, block_size=64, held_out_blocks=8)
    assert [len(block) for block in ids(held_out)] == [64] * 8


@pytest.mark.parametrize("kwargs, message", [
    ({"held_out_blocks": 0}, "held_out_blocks must be >= 1"),
    ({"held_out_blocks": 2, "held_out_fraction": 1.5}, r"held_out_fraction must be in \(0, 1\)"),
    ({"held_out_blocks": 10_000}, "fewer than the 10000 asked for"),
])
def test_bad_arguments_are_rejected_clearly(tokenizer, kwargs, message):
    documents = ["some words here " * 20 for _ in range(10)]
    with pytest.raises(ValueError, match=message):
        domain_blocks(documents, tokenizer, block_size=16, **kwargs)


def test_too_few_documents_are_rejected(tokenizer, tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("only one document\n\n   \n")
    assert text_documents(path) == ["only one document"]
    with pytest.raises(ValueError, match="at least two non-empty documents"):
        domain_blocks(text_documents(path), tokenizer, block_size=4, held_out_blocks=1)


@pytest.mark.parametrize("name", ["spanish", "english"])
def test_domain_held_out_chapters_include_the_training_pipelines_held_out_chapters(name):
    """The main job (domains, 10%) never trains on the chapters build_datasets holds out (5%, the
    offline lm-eval tasks' text): both split the same documents with seed 0, and the permutation
    is shared, so the smaller held-out set is inside the larger one."""
    from datasets import Dataset

    from hope_hf.data import sample_text_path
    from hope_hf.training.data import load_documents
    from hope_hf.training.domains import TEXT_DOMAINS

    path = sample_text_path(TEXT_DOMAINS[name])
    pipeline = load_documents([str(path)]).train_test_split(test_size=0.05, seed=0)["test"]["text"]
    domain = Dataset.from_dict({"text": domain_documents(name)}).train_test_split(test_size=0.1, seed=0)
    assert pipeline and set(pipeline) <= set(domain["test"]["text"])
    assert not set(pipeline) & set(domain["train"]["text"])
