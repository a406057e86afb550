"""Self-referential gated delta rule: chunked torch path vs the token-by-token reference.

Measures forward + backward ((o.sum() + final_state.sum()).backward()) of
`chunk_self_referential_gated_delta_rule` and `naive_self_referential_gated_delta_rule` on CPU,
fp32, B=1, H=4, d=32, T=2048, chunk_size=64. Both run in one process, interleaved; medians and
the speed-up ratio go to outputs/bench_ops.json (plus a bar plot beside it; --commit-results:
evaluation/results/). Before timing, it checks that both paths agree (outputs and gradients).

    python -m evaluation.benchmarks.bench_ops                      # defaults, ~1 minute
    python -m evaluation.benchmarks.bench_ops --seq-len 512 --repeats 5
"""

import torch
import torch.nn.functional as F

from evaluation.lib.cli import add_options
from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.timing import benchmark_parser, results_file, start, time_interleaved
from hope_hf.ops import (
    chunk_self_referential_gated_delta_rule,
    naive_self_referential_gated_delta_rule,
    state_width,
)

KERNELS = {"reference": naive_self_referential_gated_delta_rule, "chunked": chunk_self_referential_gated_delta_rule}

plt = pyplot()


def make_inputs(B, T, H, d):
    u = F.normalize(torch.randn(B, T, H, d), dim=-1)
    q = F.normalize(torch.randn(B, T, H, d), dim=-1)
    b_eta = torch.zeros(H)
    b_alpha = torch.full((H,), 2.0)
    state = 0.02 * torch.randn(B, H, d, state_width(d))
    return [t.requires_grad_() for t in (u, q, b_eta, b_alpha, state)]


def fwd_bwd(kernel, inputs, chunk_size):
    o, final_state, _ = kernel(*inputs, chunk_size)
    (o.sum() + final_state.sum()).backward()
    return o.detach(), final_state.detach()


def check_agreement(inputs, chunk_size):
    """Max abs difference chunked vs reference: outputs, final state, and every input gradient."""
    results = {}
    for name, kernel in KERNELS.items():
        for t in inputs:
            t.grad = None
        o, s = fwd_bwd(kernel, inputs, chunk_size)
        results[name] = [o, s] + [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    labels = ["o", "final_state", "grad_u", "grad_q", "grad_b_eta", "grad_b_alpha", "grad_state"]
    return {k: (a - b).abs().max().item() for k, a, b in zip(labels, results["reference"], results["chunked"])}


def main(argv=None):
    parser = benchmark_parser(__doc__, "bench_ops", threads=2, repeats=3)
    add_options(parser, batch=1, seq_len=2048, heads=4, head_dim=32, chunk_size=64)
    args = start(parser, argv)
    inputs = make_inputs(args.batch, args.seq_len, args.heads, args.head_dim)

    max_abs_diff = check_agreement(inputs, args.chunk_size)
    print("max |reference - chunked|:", {k: f"{v:.1e}" for k, v in max_abs_diff.items()})

    fns = {name: (lambda k=kernel: fwd_bwd(k, inputs, args.chunk_size)) for name, kernel in KERNELS.items()}
    timings = time_interleaved(fns, repeats=args.repeats, warmup=1, desc="fwd+bwd repeats")
    seconds = {name: t["median_s"] for name, t in timings.items()}
    speedup = seconds["reference"] / seconds["chunked"]
    print(f"T={args.seq_len}: reference {seconds['reference']:.3f} s, chunked {seconds['chunked']:.3f} s, "
          f"speed-up {speedup:.1f}x")
    results = results_file(args, __spec__.name, argv, "bench_ops")
    results.save(**{
        "seconds_fwd_bwd_median": seconds,
        "timings": timings,
        "speedup_chunked_over_reference": speedup,
        "max_abs_diff_reference_vs_chunked": max_abs_diff,
    })

    fig, ax = plt.subplots(figsize=(5, 3.5))
    bars = ax.bar(list(seconds), list(seconds.values()), color=["tab:gray", "tab:blue"])
    ax.bar_label(bars, fmt="%.3f s")
    ax.set_ylim(0, 1.15 * max(seconds.values()))
    ax.set_ylabel("fwd+bwd seconds (median)")
    ax.set_title(f"self-referential op, T={args.seq_len}, H={args.heads}, d={args.head_dim}: {speedup:.1f}x")
    fig.tight_layout()
    save_figure(fig, results.path)


if __name__ == "__main__":
    main()
