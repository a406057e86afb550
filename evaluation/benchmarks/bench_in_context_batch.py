"""InContextLearner on a batch of 8 documents in one ``read`` against reading them one at a time
(batch 1, what ``read`` did before it batched rows), both sides in one process, interleaved.

Models: a small Hope (titans, the shape of ``scripts/train.py``'s tiny preset) and SmolLM2-135M
retrofitted as the main job does (one new fast level of 384; only it learns while reading).
Rows of equal length, and rows of different lengths (padded). Reports tokens/s and the ratio.

    python -m evaluation.benchmarks.bench_in_context_batch --threads 1     # ~5 minutes
Writes outputs/bench_in_context_batch.json and .png (--commit-results: evaluation/results/).
"""

import torch

from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.timing import benchmark_parser, results_file, start, time_interleaved
from hope_hf import HopeConfig, HopeForCausalLM, InContextLearner
from hope_hf.data import smollm2_gguf_path
from hope_hf.training.continual import load_model_and_tokenizer

plt = pyplot()


def small_hope():
    config = HopeConfig(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4, mixer="titans", titans_chunk_size=16,
                        cms_levels=[{"intermediate_size": 256, "update_period": 1}])
    return HopeForCausalLM(config).eval(), dict(lr=1e-3, rule="adam", max_grad_norm=1.0)


def smollm2_cms():
    model, _ = load_model_and_tokenizer(smollm2_gguf_path(), new_level_size=384, pretrained_period=1_000_000)
    return model.eval(), dict(lr=1e-5, rule="adam", max_grad_norm=1.0, periods=[None, 1])


def batch_of(rows: int, lengths: list[int], vocab: int):
    width = max(lengths)
    ids = torch.randint(2, vocab, (rows, width))
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids, mask


def compare(learner, ids, mask, repeats: int, desc: str) -> dict:
    """Seconds of one read of the whole batch vs reading its rows one by one."""
    rows = [ids[b][mask[b].bool()][None] for b in range(len(ids))]
    fns = {
        "batched": lambda: learner.read(ids, mask),
        "one_by_one": lambda: [learner.read(row) for row in rows],
    }
    times = time_interleaved(fns, repeats=repeats, desc=desc)
    tokens = int(mask.sum())
    return {
        "rows": len(rows), "lengths": mask.sum(-1).tolist(), "tokens": tokens,
        "tokens_per_s": {name: tokens / t["median_s"] for name, t in times.items()},
        "batched_over_one_by_one": times["one_by_one"]["median_s"] / times["batched"]["median_s"],
        "times": times,
    }


def main(argv=None):
    parser = benchmark_parser(__doc__, "bench_in_context_batch", threads=1, repeats=3)
    parser.add_argument("--segment-size", type=int, default=64)
    args = start(parser, argv)
    cases = {
        "small Hope, 8 x 512": (small_hope, [512] * 8),
        "small Hope, 8 rows of 128-512": (small_hope, [512, 448, 384, 320, 256, 200, 160, 128]),
        "SmolLM2-CMS, 8 x 256": (smollm2_cms, [256] * 8),
    }
    results = {}
    for name, (build, lengths) in cases.items():
        model, options = build()
        learner = InContextLearner(model, segment_size=args.segment_size, **options)
        ids, mask = batch_of(len(lengths), lengths, model.config.vocab_size)
        with torch.no_grad():
            results[name] = compare(learner, ids, mask, args.repeats, name)
        r = results[name]
        print(f"{name}: batched {r['tokens_per_s']['batched']:.0f} tok/s, one by one "
              f"{r['tokens_per_s']['one_by_one']:.0f} tok/s: {r['batched_over_one_by_one']:.2f}x", flush=True)
    path = results_file(args, __spec__.name, argv, "bench_in_context_batch").save(
        segment_size=args.segment_size, repeats=args.repeats, cases=results)
    print(f"wrote {path}")
    plot(results, path)


def plot(results: dict, json_path) -> None:
    names = list(results)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for offset, side in ((-0.2, "one_by_one"), (0.2, "batched")):
        ax.barh([i + offset for i in range(len(names))], [results[n]["tokens_per_s"][side] for n in names],
                height=0.4, label=side.replace("_", " "))
    for i, n in enumerate(names):
        ax.text(results[n]["tokens_per_s"]["batched"], i + 0.2, f" {results[n]['batched_over_one_by_one']:.1f}x",
                va="center")
    ax.set(yticks=range(len(names)), yticklabels=names, xlabel="tokens/s read with test-time updates",
           title="InContextLearner: one batched read vs rows one by one")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, json_path)


if __name__ == "__main__":
    main()
