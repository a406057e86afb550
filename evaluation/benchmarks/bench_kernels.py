"""GPU kernels of the titans memory: the fused self-referential kernel against its baselines.

For each sequence length and head dim, times the forward and the forward + backward of
    fused        hope_hf's fused Triton kernels (fused_chunk.py), self-referential
    fla_chunks   the per-chunk fla loop (fla_bridge.py), self-referential: what it replaces
    fla_static   fla's chunk_gated_delta_rule over the whole sequence (self_referential=False):
                 the floor the fused kernel aims for
    sdpa         torch's scaled_dot_product_attention, causal, same B, H, T, d
(d=128 has no fused row: the fused kernels stop at d=64, see fused_kernel_supports)
all in bf16, in one process, interleaved, and reports milliseconds, ratios to the
fused kernel and achieved TFLOP/s (FLOPs of each method's own algorithm, counted below; a
TFLOP/s figure is only comparable between methods doing the same math).

    python -m evaluation.benchmarks.bench_kernels                  # a GPU: T in 2K/8K/32K, H=16, d in 64/128
    python -m evaluation.benchmarks.bench_kernels --seq-lens 2048 --head-dims 64 --repeats 5
    TRITON_INTERPRET=1 python -m evaluation.benchmarks.bench_kernels --smoke   # CPU: tiny shapes, checks the script

Writes outputs/bench_kernels.json and .png beside it (--commit-results: evaluation/results/;
--smoke: outputs/bench_kernels_smoke.json, no plot).
"""

import sys

import torch
import torch.nn.functional as F

from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.timing import benchmark_parser, results_file
from hope_hf.ops import chunk_self_referential_gated_delta_rule, fla_self_referential_gated_delta_rule, state_width
from hope_hf.ops.self_referential.fused_chunk import (
    fused_chunk_self_referential_gated_delta_rule,
    fused_kernel_supports,
)


def make_inputs(B, T, H, d, dtype, device):
    u = F.normalize(torch.randn(B, T, H, d, device=device), dim=-1).to(dtype)
    q = F.normalize(torch.randn(B, T, H, d, device=device), dim=-1).to(dtype)
    b_eta = torch.zeros(H, device=device)
    b_alpha = torch.full((H,), 3.0, device=device)
    state = 0.02 * torch.randn(B, H, d, state_width(d), device=device)
    return [x.requires_grad_() for x in (u, q, b_eta, b_alpha, state)]


def memory_flops(B, T, H, d, chunk):
    """Forward FLOPs of the self-referential rule as the fused kernel computes it. Multiply-adds
    per chunk of L tokens: 16 L d^2 (projections 3; targets, K S and the state update for each of
    the four column blocks, 12; the read-out's Q S, 1) and 7 L^2 d (K K^T; T R for four blocks;
    the read-out's Q K^T and its product with Delta), plus the triangular solve (L^3 / 3)."""
    L = chunk
    per_chunk = 2 * (16 * L * d * d + 7 * L * L * d) + L**3 / 3
    return B * H * (T // L) * per_chunk


def sdpa_flops(B, T, H, d):
    return 2 * 2 * B * H * d * T * T / 2  # QK^T and PV, causal half


def methods(chunk, head_dim):
    memory = {
        "fused": fused_chunk_self_referential_gated_delta_rule,
        "fla_chunks": fla_self_referential_gated_delta_rule,
        "fla_static": lambda *a, **k: fla_self_referential_gated_delta_rule(*a, self_referential=False, **k),
    }
    run = {name: (lambda fn: lambda x: fn(*x, chunk_size=chunk)[0])(fn) for name, fn in memory.items()}
    run["sdpa"] = lambda x: F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (x[1], x[0], x[0])), is_causal=True)
    if not fused_kernel_supports(head_dim, chunk):  # d=128: the op dispatches to the fla bridge
        del run["fused"]
    return run


def smoke_methods(chunk, head_dim):
    """CPU under the Triton interpreter: fla's kernels do not run there, the chunked torch path does."""
    run = methods(chunk, head_dim)
    run["fla_chunks"] = lambda x: chunk_self_referential_gated_delta_rule(*x, chunk_size=chunk)[0]
    run["fla_static"] = lambda x: chunk_self_referential_gated_delta_rule(*x, chunk_size=chunk, self_referential=False)[0]
    return run


def timer(device):
    if device == "cuda":
        import triton.testing

        return lambda fn, repeats: triton.testing.do_bench(fn, rep=repeats * 20, return_mode="median")
    import time

    def cpu_time(fn, repeats):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return 1e3 * (time.perf_counter() - start) / repeats

    return cpu_time


def benchmark(run, B, T, H, d, chunk, dtype, device, repeats):
    inputs = make_inputs(B, T, H, d, dtype, device)
    time_ms = timer(device)
    rows = {}
    for name, fn in run.items():
        def forward():
            with torch.no_grad():
                fn(inputs)

        def forward_backward():
            fn(inputs).float().sum().backward()

        rows[name] = {"fwd_ms": time_ms(forward, repeats), "fwd_bwd_ms": time_ms(forward_backward, repeats)}
    for name, row in rows.items():
        flops = sdpa_flops(B, T, H, d) if name == "sdpa" else memory_flops(B, T, H, d, chunk)
        row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
        row["fwd_bwd_tflops"] = 3 * flops / row["fwd_bwd_ms"] / 1e9  # backward counted as 2x forward
        if "fused" in rows:
            row["fwd_bwd_vs_fused"] = row["fwd_bwd_ms"] / rows["fused"]["fwd_bwd_ms"]
    return rows


def plot(results, json_path):
    plt = pyplot()

    head_dims = sorted({r["d"] for r in results})
    fig, axes = plt.subplots(1, len(head_dims), figsize=(6 * len(head_dims), 4), squeeze=False)
    for ax, d in zip(axes[0], head_dims):
        rows = [r for r in results if r["d"] == d]
        for name in rows[0]["methods"]:
            ax.plot([r["T"] for r in rows], [r["methods"][name]["fwd_bwd_ms"] for r in rows], marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="fwd+bwd ms", title=f"H=16, d={d}, bf16")
        ax.legend()
    fig.tight_layout()
    save_figure(fig, json_path)


def main(argv=None):
    parser = benchmark_parser(__doc__, "bench_kernels", threads=None, repeats=10)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on CPU (TRITON_INTERPRET=1), fp32; the results file is bench_kernels_smoke")
    args = parser.parse_args(argv)

    if args.smoke:
        device, dtype, make_run = "cpu", torch.float32, smoke_methods
        shapes = [(16, 16)]
        args.heads, args.chunk_size, args.repeats = 2, 16, 1
    elif torch.cuda.is_available():
        device, dtype, make_run = "cuda", torch.bfloat16, methods
        shapes = [(T, d) for d in args.head_dims for T in args.seq_lens]
    else:
        sys.exit("bench_kernels times GPU kernels: run it on a CUDA machine, or with --smoke under TRITON_INTERPRET=1")

    name = "bench_kernels_smoke" if args.smoke else "bench_kernels"
    results = results_file(args, __spec__.name, argv, name, device=device)
    shape_rows = []
    for T, d in shapes:
        rows = benchmark(make_run(args.chunk_size, d), args.batch_size, T, args.heads, d, args.chunk_size, dtype, device,
                         args.repeats)
        shape_rows.append({"T": T, "d": d, "chunk_size": args.chunk_size, "methods": rows})
        summary = ", ".join(f"{method} {row['fwd_bwd_ms']:.2f} ms" for method, row in rows.items())
        print(f"T={T} d={d} chunk={args.chunk_size}: fwd+bwd {summary}")
    path = results.save(device=torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)",
                        dtype=str(dtype), batch_size=args.batch_size, heads=args.heads, results=shape_rows)
    print(f"wrote {path}")
    if not args.smoke:
        plot(shape_rows, path)


if __name__ == "__main__":
    main()
