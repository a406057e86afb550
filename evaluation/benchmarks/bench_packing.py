"""Packed rows against padded batches: training tokens/s on documents of mixed lengths.

The same documents (the English corpus' first training documents, each cut to a length drawn
uniformly from [--block-size / 16, --block-size] with a fixed seed, about --tokens tokens in
all) are batched two ways:
- padded: one document per row, right-padded to the longest (an attention mask, labels -100 on
  the padding);
- packed: documents laid end to end in rows of --block-size tokens, position_ids restarting at
  each (DataCollatorWithFlattening's form: every document read alone, labels -100 at each
  document start); what no document fills is padding of its own.
Both sides run the same training step (forward, backward, AdamW) on the LM comparison's tiny
models, interleaved, median over --repeats; the real tokens per second and packed / padded are
reported. Writes outputs/bench_packing.json (--commit-results: evaluation/results/).

    python -m evaluation.benchmarks.bench_packing
"""

import torch

from evaluation.lib.corpora import documents, train_tokenizer
from evaluation.lib.models import ModelShape, build_model, matched_models
from evaluation.lib.timing import benchmark_parser, results_file, start, time_interleaved


def padded_batch(docs: list[list[int]]) -> dict:
    length = max(len(d) for d in docs)
    ids = torch.zeros(len(docs), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, doc in enumerate(docs):
        ids[row, : len(doc)], mask[row, : len(doc)] = torch.tensor(doc), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def packed_batch(docs: list[list[int]], block_size: int) -> dict:
    """Rows of ``block_size``: documents in order, a new row when the next one does not fit."""
    rows, row = [], []
    for doc in docs:
        if sum(map(len, row)) + len(doc) > block_size:
            rows.append(row)
            row = []
        row.append(doc)
    rows.append(row)
    ids = torch.zeros(len(rows), block_size, dtype=torch.long)
    positions, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for r, row_docs in enumerate(rows):
        at = 0
        for doc in row_docs:
            ids[r, at : at + len(doc)] = torch.tensor(doc)
            positions[r, at : at + len(doc)] = torch.arange(len(doc))
            labels[r, at + 1 : at + len(doc)] = torch.tensor(doc[1:])
            at += len(doc)
        positions[r, at:] = torch.arange(block_size - at)  # the padding: a sequence of its own, no labels
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def main(argv=None):
    parser = benchmark_parser(__doc__, "bench_packing", threads=1, repeats=5)
    parser.add_argument("--models", nargs="+", default=["hope_titans", "llama"])
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=4096, help="real tokens per step (the documents taken)")
    args = start(parser, argv)
    shape = ModelShape(block_size=args.block_size)
    tokenizer = train_tokenizer(["english"], shape.vocab_size)
    docs, total = [], 0
    generator = torch.Generator().manual_seed(0)
    for text in documents("english", "train"):
        length = int(torch.randint(args.block_size // 16, args.block_size + 1, (1,), generator=generator))
        doc = tokenizer(text).input_ids[:length]
        if total + len(doc) > args.tokens:
            break
        docs.append(doc)
        total += len(doc)
    batches = {"padded": padded_batch(docs), "packed": packed_batch(docs, args.block_size)}
    sizes = matched_models(args.models, shape, tolerance=0.02)
    results = results_file(args, "evaluation.benchmarks.bench_packing", argv, "bench_packing")
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, shape, sizes[name]["mlp_size"]).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(batch):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        timings = time_interleaved({side: (lambda b=b: step(b)) for side, b in batches.items()}, repeats=args.repeats,
                                   warmup=1, desc=name)
        row = {"model": name, **{f"{side}_tokens_per_s": total / t["median_s"] for side, t in timings.items()},
               **{f"{side}_s_all": t["all_s"] for side, t in timings.items()}}
        row["packed_over_padded"] = row["packed_tokens_per_s"] / row["padded_tokens_per_s"]
        rows.append(row)
        print(f"{name:12} padded {row['padded_tokens_per_s']:8.0f} tok/s, packed {row['packed_tokens_per_s']:8.0f} tok/s: "
              f"{row['packed_over_padded']:.2f}x", flush=True)
    shapes = {side: list(b["input_ids"].shape) for side, b in batches.items()}
    lengths = sorted(len(d) for d in docs)
    results.save(documents={"count": len(docs), "real_tokens": total, "lengths_min_median_max": [
        lengths[0], lengths[len(lengths) // 2], lengths[-1]]}, batch_shapes=shapes, parameters=sizes, rows=rows)
    print(f"{len(docs)} documents, {total} tokens: padded {shapes['padded']}, packed {shapes['packed']}; wrote {results.path}")
    return results.saved


if __name__ == "__main__":
    main()
