"""Linear scaling in T of one titans layer (HopeTitansMixer) forward on CPU.

Times `mixer(hidden_states)` under torch.no_grad at T = 1024, 2048, 4096, 8192, 16384 (hidden 256,
4 heads, chunk 64, batch 1); the lengths are interleaved within every repeat and the median is
kept. Reports time per token at each T (flat = linear), a least-squares fit time = a + b*T and the
log-log slope (1.0 = linear, 2.0 = quadratic). Writes outputs/bench_titans_scaling.json
(--commit-results: evaluation/results/) and beside it a log-log plot with a linear reference line.

    python -m evaluation.benchmarks.bench_titans_scaling                  # defaults, ~1 minute
    python -m evaluation.benchmarks.bench_titans_scaling --seq-lens 512 1024 2048 --repeats 3
"""

import numpy as np
import torch

from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.timing import benchmark_parser, results_file, start, time_interleaved
from hope_hf import HopeConfig, HopeForCausalLM

plt = pyplot()


def main(argv=None):
    parser = benchmark_parser(__doc__, "bench_titans_scaling", threads=2, repeats=5)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=64)
    args = start(parser, argv)
    config = HopeConfig(vocab_size=256, hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size,
                        num_hidden_layers=1, num_attention_heads=args.heads, mixer="titans",
                        titans_chunk_size=args.chunk_size)
    mixer = HopeForCausalLM(config).model.layers[0].mixer.eval()
    inputs = {T: torch.randn(1, T, args.hidden_size) for T in args.seq_lens}

    with torch.no_grad():
        fns = {T: (lambda x=x: mixer(x)) for T, x in inputs.items()}
        timings = time_interleaved(fns, repeats=args.repeats, warmup=1, desc="repeats (all T each)")

    lens = np.array(args.seq_lens, dtype=float)
    seconds = np.array([timings[T]["median_s"] for T in args.seq_lens])
    per_token_us = 1e6 * seconds / lens
    slope, intercept = np.polyfit(lens, seconds, 1)  # seconds = intercept + slope * T
    loglog_exponent = np.polyfit(np.log(lens), np.log(seconds), 1)[0]
    flatness = per_token_us.max() / per_token_us.min()
    rows = [{"seq_len": int(T), "seconds_median": float(s), "us_per_token": float(p), "seconds_all": timings[int(T)]["all_s"]}
            for T, s, p in zip(lens, seconds, per_token_us)]
    for r in rows:
        print(f"T={r['seq_len']:>6}: {r['seconds_median']:.3f} s, {r['us_per_token']:.1f} us/token")
    print(f"fit: time = {intercept * 1e3:.1f} ms + {slope * 1e6:.1f} us * T; log-log exponent {loglog_exponent:.3f}; "
          f"time/token max/min {flatness:.2f}")
    results = results_file(args, __spec__.name, argv, "bench_titans_scaling")
    results.save(**{
        "results": rows,
        "fit_linear": {"intercept_s": float(intercept), "slope_us_per_token": float(slope * 1e6)},
        "loglog_exponent": float(loglog_exponent),
        "max_over_min_time_per_token": float(flatness),
    })

    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.loglog(lens, seconds, "o-", label="titans layer forward (median)")
    ax.loglog(lens, seconds[0] * lens / lens[0], "--", color="gray", label="linear reference (∝ T)")
    ax.loglog(lens, seconds[0] * (lens / lens[0]) ** 2, ":", color="lightgray", label="quadratic (∝ T²)")
    ax.set_xticks(lens, [str(int(T)) for T in lens])
    ax.set_xlabel("sequence length T")
    ax.set_ylabel(f"seconds (CPU, {args.threads} threads)")
    ax.set_title(f"one titans layer, no grad: exponent {loglog_exponent:.2f}, us/token max/min {flatness:.2f}")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, results.path)


if __name__ == "__main__":
    main()
