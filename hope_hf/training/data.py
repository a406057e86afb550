"""Text data for training: local .txt / .jsonl / .json / .parquet files or a `datasets` name,
tokenised with ``Dataset.map(batched=True)``, split into train and held-out documents, and packed
into fixed-length blocks with an EOS token after every document."""

from pathlib import Path

from datasets import Dataset, load_dataset

BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_documents(sources: list[str], text_column: str = "text") -> Dataset:
    """One row per document. Local paths must exist; anything else is a `datasets` name."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    local = [Path(s) for s in sources if Path(s).suffix in BUILDERS or Path(s).exists()]
    if local:
        for path in local:
            if not path.exists():
                raise FileNotFoundError(f"data file {str(path)!r} does not exist")
        suffixes = {p.suffix for p in local}
        if len(suffixes) != 1 or next(iter(suffixes)) not in BUILDERS:
            raise ValueError(f"data files must share one of the suffixes {sorted(BUILDERS)}, got {sorted(suffixes)}")
        builder = BUILDERS[next(iter(suffixes))]
        documents = load_dataset(builder, data_files=[str(p) for p in local], split="train")
    else:
        documents = load_dataset(sources[0], split="train")
    if text_column not in documents.column_names:
        raise ValueError(f"data has no column {text_column!r}; columns: {documents.column_names}")
    documents = documents.filter(lambda batch: [bool(t and t.strip()) for t in batch[text_column]], batched=True)
    if len(documents) == 0:
        raise ValueError(f"no non-empty documents in {sources}")
    return documents.select_columns([text_column])


def pack_blocks(documents: Dataset, tokenizer, block_size: int, num_proc: int | None = None,
                text_column: str = "text") -> Dataset:
    """Tokenise, add EOS after each document, concatenate and cut into blocks of block_size."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer needs an eos_token to separate documents")

    def tokenize(batch):
        ids = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
        return {"ids": [doc + [eos] for doc in ids]}

    def group(batch):
        flat = [token for doc in batch["ids"] for token in doc]
        usable = len(flat) // block_size * block_size
        return {"input_ids": [flat[i : i + block_size] for i in range(0, usable, block_size)]}

    tokens = documents.map(tokenize, batched=True, num_proc=num_proc, remove_columns=documents.column_names)
    return tokens.map(group, batched=True, batch_size=1000, num_proc=num_proc, remove_columns=["ids"])


def build_datasets(sources, tokenizer, block_size: int, eval_fraction: float = 0.05, seed: int = 0,
                   num_proc: int | None = None, text_column: str = "text", max_model_length: int | None = None):
    """(train blocks, held-out blocks); documents are split before packing, so no block straddles."""
    if max_model_length is not None and block_size > max_model_length:
        raise ValueError(f"block_size {block_size} is over the model's maximum ({max_model_length} positions)")
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    documents = load_documents(sources, text_column)
    if len(documents) < 2:
        raise ValueError("need at least two documents to hold one out for evaluation")
    split = documents.train_test_split(test_size=eval_fraction, seed=seed)
    train = pack_blocks(split["train"], tokenizer, block_size, num_proc, text_column)
    held_out = pack_blocks(split["test"], tokenizer, block_size, num_proc, text_column)
    for name, blocks in (("training", train), ("held-out", held_out)):
        if len(blocks) == 0:
            raise ValueError(f"the {name} split holds fewer than block_size={block_size} tokens")
    return train.with_format("torch"), held_out.with_format("torch")
