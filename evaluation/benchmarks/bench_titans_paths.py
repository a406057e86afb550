"""The titans CPU paths against what they replaced, both sides in one process, interleaved.

1. The self-referential op, forward + backward (B=1, H=4, d=64, chunk 64, the model's shape):
   ``autograd`` = the chunk loop written as torch ops with autograd's backward (``scan_chunks``
   + ``delta_rule_chunk``, the CPU path before ChunkScan) vs ``chunk_scan`` = the current path
   (one autograd.Function, hand-written backward). Also the operator calls and the time split of
   one fwd+bwd from torch.profiler.
2. A left-padded batch of 8 rows of different lengths (and, with a cache, different chunk
   phases) through one titans mixer, short (prompts, T=48) and long (T=512): ``ragged`` (one call: every row a sequence
   of the op's cu_seqlens, at its own chunk phase) vs ``per_row`` (the loop over rows), forward without grad and forward + backward.
Writes outputs/bench_titans_paths.json and .png (--commit-results: evaluation/results/).

    python -m evaluation.benchmarks.bench_titans_paths            # ~1 minute on quiet cores
    python -m evaluation.benchmarks.bench_titans_paths --threads 1 --output evaluation/results/bench_titans_paths_1thread.json
"""

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from evaluation.lib.cli import add_options
from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.timing import benchmark_parser, results_file, start, time_interleaved
from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.ops import chunk_self_referential_gated_delta_rule, state_width
from hope_hf.ops.self_referential.chunk import delta_rule_chunk
from hope_hf.ops.self_referential.common import scan_chunks

plt = pyplot()


def autograd_path(u, q, b_eta, b_alpha, state, chunk_size):
    return scan_chunks(u, q, b_eta, b_alpha, state, chunk_size, 1.0, None, 0, None, True, False,
                       segment_fn=delta_rule_chunk)


def op_inputs(T, heads, head_dim):
    u = F.normalize(torch.randn(1, T, heads, head_dim), dim=-1).requires_grad_()
    q = F.normalize(torch.randn(1, T, heads, head_dim), dim=-1).requires_grad_()
    b_eta = torch.zeros(heads, requires_grad=True)
    b_alpha = torch.full((heads,), 3.0, requires_grad=True)
    state = (0.02 * torch.randn(1, heads, head_dim, state_width(head_dim))).requires_grad_()
    return u, q, b_eta, b_alpha, state


def op_fns(T, heads, head_dim, chunk_size):
    inputs = op_inputs(T, heads, head_dim)

    def run(kernel):
        def fwd_bwd():
            o, s, _ = kernel(*inputs, chunk_size)
            (o.sum() + s.sum()).backward()
        return fwd_bwd

    return {"autograd": run(autograd_path), "chunk_scan": run(chunk_self_referential_gated_delta_rule)}, inputs


def profile_fn(fn):
    """Operator calls (top-level aten ops and autograd nodes) and self CPU time by op."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total_ms = sum(e.self_cpu_time_total for e in events) / 1e3
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return {
        "op_calls": sum(e.count for e in events),
        "bmm_calls": sum(e.count for e in events if e.key in ("aten::bmm", "aten::mm")),
        "self_cpu_ms": total_ms,
        "top_ops": [{"op": e.key, "calls": e.count, "share": e.self_cpu_time_total / 1e3 / total_ms} for e in top],
    }


def each_row_alone(mixer, projected, conv_state, state, seen, mask):
    """What the ragged path replaced: a loop over the rows, each on its real tokens alone."""
    o = projected.new_zeros(*projected.shape[:2], mixer.num_heads, mixer.head_dim)
    for b in range(projected.shape[0]):
        idx = mask[b].nonzero().squeeze(-1)
        mixed, _ = mixer._conv(projected[b : b + 1, idx], conv_state[b : b + 1])
        offset = 0 if seen is None else int(seen[b]) % mixer.chunk_size
        o[b, idx] = mixer._run_memory(mixed, state[b : b + 1], chunk_offset=offset)[0][0]
    return o, None, None


def padded_batch_fns(mixer, lengths, T, with_cache, grad):
    """A left-padded batch through ``mixer``: the ragged path (one call) vs the per-row loop."""
    B, width = len(lengths), 2 * mixer.num_heads * mixer.head_dim
    projected = torch.randn(B, T, width, requires_grad=grad)
    mask = (torch.arange(T)[None] >= (T - torch.tensor(lengths))[:, None]).long()
    conv_state = torch.zeros(B, width, mixer.conv1d.kernel_size[0] - 1)
    initial = mixer.initial_state.detach().expand(B, -1, -1, -1)
    state = torch.stack([initial, initial], dim=2)
    seen = torch.arange(B) * 7 if with_cache else None  # rows at different chunk phases

    def run(path):
        def call():
            with torch.set_grad_enabled(grad):
                o = path(projected, conv_state, state, seen, mask)[0]
                if grad:
                    o.sum().backward()
        return call

    return {"ragged": run(lambda *a: mixer._ragged(*a, None)), "per_row": run(lambda *a: each_row_alone(mixer, *a))}


def main(argv=None):
    parser = benchmark_parser(__doc__, "bench_titans_paths", threads=2, repeats=5)
    add_options(parser, seq_len=1024, hidden_size=256, heads=4, chunk_size=64)
    parser.add_argument("--prompt-len", type=int, default=48, help="padded length of the short batch of 8")
    parser.add_argument("--batch-seq-len", type=int, default=512, help="padded length of the long batch of 8")
    args = start(parser, argv)
    head_dim = args.hidden_size // args.heads

    fns, inputs = op_fns(args.seq_len, args.heads, head_dim, args.chunk_size)
    with torch.no_grad():
        outs = {name: (autograd_path if name == "autograd" else chunk_self_referential_gated_delta_rule)(
            *inputs, args.chunk_size) for name in fns}
    max_diff = max((a - b).abs().max().item() for a, b in zip(outs["autograd"], outs["chunk_scan"]))
    op = time_interleaved(fns, repeats=args.repeats, desc="op fwd+bwd")
    op_row = {
        "setting": f"B=1, H={args.heads}, d={head_dim}, T={args.seq_len}, chunk {args.chunk_size}, fwd+bwd",
        "median_s": {n: t["median_s"] for n, t in op.items()},
        "speedup_chunk_scan_over_autograd": op["autograd"]["median_s"] / op["chunk_scan"]["median_s"],
        "max_abs_diff_outputs": max_diff,
        "profile": {name: profile_fn(fn) for name, fn in fns.items()},
    }
    print(f"op fwd+bwd: autograd {op_row['median_s']['autograd'] * 1e3:.0f} ms, chunk_scan "
          f"{op_row['median_s']['chunk_scan'] * 1e3:.0f} ms, x{op_row['speedup_chunk_scan_over_autograd']:.2f}; op calls "
          f"{op_row['profile']['autograd']['op_calls']} -> {op_row['profile']['chunk_scan']['op_calls']}")

    config = HopeConfig(mixer="titans", hidden_size=args.hidden_size, num_attention_heads=args.heads,
                        num_hidden_layers=1, intermediate_size=64, vocab_size=256, titans_chunk_size=args.chunk_size)
    mixer = HopeForCausalLM(config).model.layers[0].mixer
    batch_rows = []
    settings = [(args.prompt_len, False, False), (args.prompt_len, True, False), (args.prompt_len, False, True),
                (args.batch_seq_len, False, False), (args.batch_seq_len, False, True)]
    for T, with_cache, grad in settings:
        lengths = [T - (T // 9) * i for i in range(8)]  # from T down to about T/9 real tokens
        timing = time_interleaved(padded_batch_fns(mixer, lengths, T, with_cache, grad), repeats=args.repeats,
                                  desc=f"batch of 8 T={T} cache={with_cache} grad={grad}")
        row = {
            "padded_length": T,
            "setting": f"batch 8, padded length {T}, lengths {lengths}, "
                       f"{'rows at chunk phases 0,7,14,...' if with_cache else 'no cache'}, "
                       f"{'forward + backward' if grad else 'forward, no grad'}",
            "median_s": {n: t["median_s"] for n, t in timing.items()},
            "speedup_ragged_over_per_row": timing["per_row"]["median_s"] / timing["ragged"]["median_s"],
        }
        batch_rows.append(row)
        print(f"{row['setting']}: x{row['speedup_ragged_over_per_row']:.2f}")
    results = results_file(args, __spec__.name, argv, "bench_titans_paths")
    results.save(op=op_row, left_padded_batch=batch_rows)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = list(op_row["median_s"])
    bars = axes[0].bar(names, [op_row["median_s"][n] * 1e3 for n in names], color=["tab:gray", "tab:blue"])
    axes[0].bar_label(bars, fmt="%.0f ms")
    axes[0].set_title(f"self-referential op fwd+bwd, T={args.seq_len}\n"
                      f"x{op_row['speedup_chunk_scan_over_autograd']:.2f}")
    labels = [f"T={r['padded_length']}\n{'fwd+bwd' if 'backward' in r['setting'] else 'fwd'}"
              f"{', phases' if 'phases' in r['setting'] else ''}" for r in batch_rows]
    xs = range(len(batch_rows))
    for offset, name, color in [(-0.2, "per_row", "tab:gray"), (0.2, "ragged", "tab:blue")]:
        axes[1].bar([x + offset for x in xs], [r["median_s"][name] * 1e3 for r in batch_rows], 0.4, label=name,
                    color=color)
    axes[1].set_xticks(list(xs), [f"{lab}\nx{r['speedup_ragged_over_per_row']:.1f}" for lab, r in zip(labels, batch_rows)],
                       fontsize=7)
    axes[1].set_ylabel("ms")
    axes[1].set_yscale("log")
    axes[1].set_title("left-padded batch of 8 through one titans mixer")
    axes[1].legend()
    fig.tight_layout()
    save_figure(fig, results.path)


if __name__ == "__main__":
    main()
