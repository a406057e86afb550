"""Training throughput on CPU: HopeForCausalLM (titans mixer) vs a matched LlamaForCausalLM.

Both models share vocab_size, hidden_size, intermediate_size, num_hidden_layers and
num_attention_heads (defaults: 8192 / 256 / 688 / 4 / 4). One training step = forward + backward +
AdamW step at batch 1; tokens/s = T / median step time, at T = 1024 and 4096, the two models
interleaved step by step in one process. Reports tokens/s, the ratio Hope/Llama and the parameter
counts, plus a breakdown that explains the gap: fwd+bwd of one titans mixer vs one Llama
attention block (same input) and a torch.profiler top-ops table of one Hope step.
Writes outputs/bench_model_throughput.json and .png (--commit-results: evaluation/results/).

    python -m evaluation.benchmarks.bench_model_throughput                  # defaults, ~2 minutes
    python -m evaluation.benchmarks.bench_model_throughput --seq-lens 512 2048 --repeats 3 --no-profile
    python -m evaluation.benchmarks.bench_model_throughput --with-autograd-path --threads 1   # + Hope on the old chunk path
    python -m evaluation.benchmarks.bench_model_throughput --seq-lens 8192 --no-profile --output evaluation/results/bench_model_throughput_8k.json

On a loaded machine use --threads 1: with more threads than free cores, every parallel op waits
for a descheduled thread, which hurts Hope's many mid-sized ops far more than attention's few.
"""

import contextlib

import torch
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from evaluation.lib.cli import add_options
from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.timing import benchmark_parser, results_file, start, time_interleaved
from hope_hf import HopeConfig, HopeForCausalLM

plt = pyplot()


def build_models(args):
    shared = dict(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, max_position_embeddings=max(args.seq_lens),
    )
    hope = HopeForCausalLM(HopeConfig(mixer="titans", titans_chunk_size=args.chunk_size, **shared))
    llama = LlamaForCausalLM(LlamaConfig(**shared, attn_implementation="sdpa"))
    return {"hope": hope.train(), "llama": llama.train()}


@contextlib.contextmanager
def autograd_chunk_path():
    """The CPU chunk path as it was before ChunkScan: torch ops per chunk, autograd's backward."""
    import hope_hf.ops.self_referential as ops
    from hope_hf.ops.self_referential.chunk import delta_rule_chunk
    from hope_hf.ops.self_referential.common import scan_chunks

    def kernel(*args, **kwargs):
        return scan_chunks(*args, **kwargs, segment_fn=delta_rule_chunk)

    saved, ops.chunk_self_referential_gated_delta_rule = ops.chunk_self_referential_gated_delta_rule, kernel
    try:
        yield
    finally:
        ops.chunk_self_referential_gated_delta_rule = saved


def with_autograd_path(fn):
    def run():
        with autograd_chunk_path():
            fn()
    return run


def train_step_fn(model, seq_len, vocab_size):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab_size, (1, seq_len))

    def step():
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def mixer_fns(models, seq_len, hidden_size):
    """fwd+bwd of layer 0's sequence mixer alone: Hope's titans memory vs Llama's attention."""
    x = torch.randn(1, seq_len, hidden_size, requires_grad=True)
    titans = models["hope"].model.layers[0].mixer
    attention = models["llama"].model.layers[0].self_attn
    rope = models["llama"].model.rotary_emb(x, torch.arange(seq_len)[None])

    def run_titans():
        titans(x).sum().backward()

    def run_attention():
        attention(x, position_embeddings=rope, attention_mask=None)[0].sum().backward()

    return {"titans_mixer": run_titans, "llama_attention": run_attention}


def profile_step(step, top=12):
    """Top ops by self CPU time of one training step."""
    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
             "share": e.self_cpu_time_total / total} for e in events[:top]]


def main(argv=None):
    parser = benchmark_parser(__doc__, "bench_model_throughput", threads=2, repeats=5)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096])
    add_options(parser, hidden_size=256, intermediate_size=688, layers=4, heads=4, vocab_size=8192, chunk_size=64)
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler table")
    parser.add_argument("--with-autograd-path", action="store_true",
                        help="also time Hope with the chunk loop on the autograd path it had before ChunkScan")
    args = start(parser, argv)
    models = build_models(args)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    print(f"parameters: hope {params['hope']:,}, llama {params['llama']:,}")

    rows = []
    for seq_len in tqdm(args.seq_lens, desc="sequence lengths"):
        steps = {name: train_step_fn(m, seq_len, args.vocab_size) for name, m in models.items()}
        if args.with_autograd_path:  # the same Hope model, its chunk loop on the previous (autograd) path
            steps["hope_autograd_path"] = with_autograd_path(train_step_fn(models["hope"], seq_len, args.vocab_size))
        timings = time_interleaved(steps, repeats=args.repeats, desc=f"train steps T={seq_len}")
        tokens_per_s = {name: seq_len / t["median_s"] for name, t in timings.items()}
        ratio = tokens_per_s["hope"] / tokens_per_s["llama"]

        mixers = time_interleaved(mixer_fns(models, seq_len, args.hidden_size), repeats=args.repeats,
                                  desc=f"mixers T={seq_len}")
        mixer_s = {name: t["median_s"] for name, t in mixers.items()}
        step_gap = timings["hope"]["median_s"] - timings["llama"]["median_s"]
        mixer_gap = args.layers * (mixer_s["titans_mixer"] - mixer_s["llama_attention"])
        row = {
            "seq_len": seq_len,
            "tokens_per_s": tokens_per_s,
            "hope_over_llama": ratio,
            "tokens_per_s_from_fastest_step": {name: seq_len / t["min_s"] for name, t in timings.items()},
            "step_s_median": {name: t["median_s"] for name, t in timings.items()},
            "step_s_all": {name: t["all_s"] for name, t in timings.items()},
            "mixer_fwd_bwd_s_median": mixer_s,
            "titans_over_attention": mixer_s["titans_mixer"] / mixer_s["llama_attention"],
            "step_gap_s": step_gap,
            "layers_x_mixer_gap_s": mixer_gap,
            "titans_share_of_hope_step": args.layers * mixer_s["titans_mixer"] / timings["hope"]["median_s"],
        }
        if args.with_autograd_path:
            row["hope_over_hope_autograd_path"] = tokens_per_s["hope"] / tokens_per_s["hope_autograd_path"]
        if not args.no_profile:
            row["hope_step_profile_top_ops"] = profile_step(steps["hope"])
        rows.append(row)
        print(f"T={seq_len}: hope {tokens_per_s['hope']:.0f} tok/s, llama {tokens_per_s['llama']:.0f} tok/s, "
              f"hope/llama {ratio:.2f}; one mixer fwd+bwd: titans {mixer_s['titans_mixer'] * 1e3:.0f} ms, "
              f"attention {mixer_s['llama_attention'] * 1e3:.0f} ms; "
              f"step gap {step_gap:.2f} s vs {args.layers} x mixer gap {mixer_gap:.2f} s")
    results = results_file(args, __spec__.name, argv, "bench_model_throughput")
    results.save(parameters=params, results=rows)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs = range(len(rows))
    names = [n for n in ("hope_autograd_path", "hope", "llama") if n in rows[0]["tokens_per_s"]]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        label = f"{name} ({params[name.split('_')[0]] / 1e6:.2f}M params)"
        bars = ax.bar([x + (i - (len(names) - 1) / 2) * width for x in xs], [r["tokens_per_s"][name] for r in rows],
                      width, label=label)
        ax.bar_label(bars, fmt="%.0f")
    ax.set_xticks(list(xs), [f"T={r['seq_len']}\nhope/llama={r['hope_over_llama']:.2f}" for r in rows])
    ax.set_ylabel(f"training tokens/s (CPU, {args.threads} threads)")
    ax.set_title("train step (fwd+bwd+AdamW), batch 1: Hope (titans) vs Llama")
    ax.set_ylim(0, 1.3 * max(max(r["tokens_per_s"].values()) for r in rows))
    ax.legend(loc="upper right")
    fig.tight_layout()
    save_figure(fig, results.path)


if __name__ == "__main__":
    main()
