"""What a two-layer main memory costs (issue 30): Hope titans with titans_memory_depth 1 and 2,
matched in non-embedding parameters (the LM comparison's tiny shape, evaluation.lib.models), one
training step (forward, backward, AdamW) on random tokens at batch --batch-size, interleaved in
one process: training tokens/s, depth 2 / depth 1, and the peak resident memory of a step above
the process's level. Writes outputs/bench_deep_memory.json and .png (--commit-results:
evaluation/results/).

    python -m evaluation.benchmarks.bench_deep_memory                 # T = 256 and 1024, ~3 minutes
"""

import torch

from evaluation.benchmarks.bench_long_context import PeakMemory
from evaluation.lib.models import ModelShape, build_model, matched_models
from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.timing import benchmark_parser, results_file, start, time_interleaved

MODELS = ("hope_titans", "hope_titans_deep")


def plot(rows: list[dict], path) -> None:
    fig, axes = pyplot().subplots(1, 2, figsize=(9, 3.5))
    for ax, (key, label, scale) in zip(axes, (("tokens_per_s", "training tokens/s", 1),
                                              ("peak_memory_bytes", "peak memory of a step (MB)", 1e-6))):
        for name in MODELS:
            ax.plot([r["seq_len"] for r in rows], [r[f"{name}_{key}"] * scale for r in rows], marker="o", label=name)
        ax.set(xscale="log", xlabel="tokens per row", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    save_figure(fig, path)


def main(argv=None):
    parser = benchmark_parser(__doc__, "bench_deep_memory", threads=1, repeats=5)
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[256, 1024])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--target-non-embedding", type=int, default=800_000)
    args = start(parser, argv)
    shape = ModelShape(hidden_size=args.hidden_size, num_heads=args.hidden_size // 32, block_size=max(args.seq_lens),
                       target_non_embedding=args.target_non_embedding)
    sizes = matched_models(MODELS, shape, tolerance=0.02)
    results = results_file(args, "evaluation.benchmarks.bench_deep_memory", argv, "bench_deep_memory")
    rows = []
    for T in args.seq_lens:
        torch.manual_seed(0)
        ids = torch.randint(3, shape.vocab_size, (args.batch_size, T))
        steps = {}
        for name in MODELS:
            model = build_model(name, shape, sizes[name]["mlp_size"]).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

            def step(model=model, optimizer=optimizer):
                model(ids, labels=ids).loss.backward()
                optimizer.step()
                optimizer.zero_grad()

            steps[name] = step
        peaks = {}
        for name, step in steps.items():
            step()  # AdamW's moments exist before the memory is measured
            with PeakMemory() as memory:
                step()
            peaks[name] = memory.peak
        timings = time_interleaved(steps, repeats=args.repeats, desc=f"T={T}")
        row = {"seq_len": T, "batch_size": args.batch_size,
               **{f"{name}_tokens_per_s": args.batch_size * T / timings[name]["median_s"] for name in MODELS},
               **{f"{name}_peak_memory_bytes": peaks[name] for name in MODELS},
               **{f"{name}_s_all": timings[name]["all_s"] for name in MODELS}}
        row["deep_over_linear_tokens_per_s"] = row["hope_titans_deep_tokens_per_s"] / row["hope_titans_tokens_per_s"]
        row["deep_over_linear_peak_memory"] = peaks["hope_titans_deep"] / max(peaks["hope_titans"], 1)
        rows.append(row)
        print(f"T={T}: depth 2 at {row['deep_over_linear_tokens_per_s']:.2f}x depth 1's tokens/s, peak memory "
              f"{peaks['hope_titans_deep'] / 1e6:.0f} vs {peaks['hope_titans'] / 1e6:.0f} MB", flush=True)
        results.save(parameters=sizes, rows=rows)
    plot(rows, results.path.with_suffix(".png"))
    print(f"wrote {results.path} and its .png")
    return results.saved


if __name__ == "__main__":
    main()
