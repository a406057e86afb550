"""Does ``torch.compile`` speed up the titans CPU path? Both sides in one process, interleaved.

1. The self-referential op, forward + backward (B=1, H=4, d=64, chunk 64, T=1024): eager vs
   ``use_compiled_chunks()`` (ChunkScan's per-chunk forward and backward compiled by inductor).
2. One training step (forward + backward) of the tiny Hope of ``scripts/train.py`` at T=1024:
   eager vs compiled chunks vs ``torch.compile(model)``.
Reports the compile time (the first call), the largest difference from eager, and the median
and fastest step of each side. Writes outputs/bench_compile.json (--commit-results:
evaluation/results/).

    python -m evaluation.benchmarks.bench_compile          # ~10 minutes on 2 CPU cores, mostly compiling
"""

import time

import torch

from evaluation.lib.timing import benchmark_parser, results_file, start, time_interleaved
from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.ops import chunk_self_referential_gated_delta_rule, state_width, use_compiled_chunks


def op_inputs(T: int, heads: int = 4, head_dim: int = 64):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, T, heads, head_dim, generator=g).requires_grad_()
    q = torch.randn(1, T, heads, head_dim, generator=g).requires_grad_()
    b_eta, b_alpha = torch.zeros(heads, requires_grad=True), torch.full((heads,), 4.0, requires_grad=True)
    state = (0.02 * torch.randn(1, heads, head_dim, state_width(head_dim), generator=g)).requires_grad_()
    return u, q, b_eta, b_alpha, state


def op_step(T: int, compiled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    use_compiled_chunks(compiled)
    u, q, b_eta, b_alpha, state = op_inputs(T)
    o, final, _ = chunk_self_referential_gated_delta_rule(u, q, b_eta, b_alpha, state, 64)
    (o.square().mean() + final.square().mean()).backward()
    return o.detach(), u.grad


def model_step(model, input_ids, compiled_chunks: bool = False) -> torch.Tensor:
    use_compiled_chunks(compiled_chunks)
    for p in model.parameters():
        p.grad = None
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    return loss.detach()


def timed_first_call(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def speedups(times: dict) -> dict:
    """eager time / each other side's, by the medians and by the fastest steps."""
    return {name: {"median": times["eager"]["median_s"] / t["median_s"], "fastest": times["eager"]["min_s"] / t["min_s"]}
            for name, t in times.items() if name != "eager"}


def main(argv=None):
    parser = benchmark_parser(__doc__, "bench_compile", threads=1, repeats=7)
    parser.add_argument("--seq-len", type=int, default=1024)
    args = start(parser, argv, seed=None)
    T = args.seq_len

    (o_eager, du_eager) = op_step(T, False)
    (o_comp, du_comp), op_compile_s = timed_first_call(lambda: op_step(T, True))
    print(f"op: compiled in {op_compile_s:.0f} s", flush=True)
    op_times = time_interleaved({"eager": lambda: op_step(T, False), "compiled_chunks": lambda: op_step(T, True)},
                                args.repeats, desc="op")

    config = HopeConfig(vocab_size=4096, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        cms_levels=[{"intermediate_size": 256, "update_period": 1},
                                    {"intermediate_size": 128, "update_period": 8}])
    torch.manual_seed(0)
    model = HopeForCausalLM(config)
    input_ids = torch.randint(0, config.vocab_size, (1, T), generator=torch.Generator().manual_seed(1))
    compiled_model = torch.compile(model)
    loss_eager = model_step(model, input_ids)
    loss_chunks, chunks_compile_s = timed_first_call(lambda: model_step(model, input_ids, compiled_chunks=True))
    loss_comp, model_compile_s = timed_first_call(lambda: model_step(compiled_model, input_ids))
    print(f"model: compiled in {model_compile_s:.0f} s", flush=True)
    model_times = time_interleaved({"eager": lambda: model_step(model, input_ids),
                                    "compiled_chunks": lambda: model_step(model, input_ids, compiled_chunks=True),
                                    "compiled_model": lambda: model_step(compiled_model, input_ids)},
                                   args.repeats, desc="model")

    results = {
        "seq_len": T,
        "op": {"shape": "B=1, H=4, d=64, chunk 64, fwd+bwd", "compile_s": op_compile_s,
               "max_abs_diff_output": (o_comp - o_eager).abs().max().item(),
               "max_abs_diff_grad_u": (du_comp - du_eager).abs().max().item(),
               "times": op_times, "speedup": speedups(op_times)},
        "model": {"shape": "tiny Hope (hidden 128, 2 layers, titans), one training step",
                  "compile_s": {"compiled_chunks": chunks_compile_s, "compiled_model": model_compile_s},
                  "loss_diff": {"compiled_chunks": (loss_chunks - loss_eager).abs().item(),
                                "compiled_model": (loss_comp - loss_eager).abs().item()},
                  "times": model_times, "speedup": speedups(model_times)},
    }
    for part in ("op", "model"):
        for name, speedup in results[part]["speedup"].items():
            print(f"{part}: {name} {speedup['median']:.2f}x eager's speed (median), {speedup['fastest']:.2f}x (fastest)")
    print(f"wrote {results_file(args, __spec__.name, argv, 'bench_compile').save(**results)}")


if __name__ == "__main__":
    main()
