"""Does ``torch.compile`` speed up the titans CPU path? Both sides in one process, interleaved.

1. The self-referential op, forward + backward (B=1, H=4, d=64, chunk 64, T=1024): eager vs the
   chunk functions of ``ChunkScan`` (``_chunk_forward``, ``_chunk_backward``) compiled by inductor.
2. One training step (forward + backward) of the tiny Hope of ``scripts/train.py`` at T=1024:
   eager vs ``torch.compile(model)``.
Reports the compile time (the first call), the largest difference from eager, and the median
and fastest step of each side. Writes evaluation/results/bench_compile.json.

    python evaluation/benchmarks/bench_compile.py          # ~10 minutes on 2 CPU cores, mostly compiling
"""

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # see bench_titans_paths.py

import torch  # noqa: E402

sys.path.insert(0, str(HERE))
from common import time_interleaved, write_results  # noqa: E402

sys.path.pop(0)

import hope_hf.ops.self_referential.chunk as chunk_module  # noqa: E402
from hope_hf import HopeConfig, HopeForCausalLM  # noqa: E402
from hope_hf.ops import chunk_self_referential_gated_delta_rule, state_width  # noqa: E402


def op_inputs(T: int, heads: int = 4, head_dim: int = 64):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, T, heads, head_dim, generator=g).requires_grad_()
    q = torch.randn(1, T, heads, head_dim, generator=g).requires_grad_()
    b_eta, b_alpha = torch.zeros(heads, requires_grad=True), torch.full((heads,), 4.0, requires_grad=True)
    state = (0.02 * torch.randn(1, heads, head_dim, state_width(head_dim), generator=g)).requires_grad_()
    return u, q, b_eta, b_alpha, state


def op_step(T: int, chunk_fns) -> tuple[torch.Tensor, torch.Tensor]:
    """fwd + bwd of the op with ``chunk_fns`` = (forward, backward) as ChunkScan's chunk functions."""
    chunk_module._chunk_forward, chunk_module._chunk_backward = chunk_fns
    u, q, b_eta, b_alpha, state = op_inputs(T)
    o, final, _ = chunk_self_referential_gated_delta_rule(u, q, b_eta, b_alpha, state, 64)
    (o.square().mean() + final.square().mean()).backward()
    return o.detach(), u.grad


def model_step(model, input_ids) -> torch.Tensor:
    for p in model.parameters():
        p.grad = None
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    return loss.detach()


def timed_first_call(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def summary(times: dict, eager: str, compiled: str) -> dict:
    return {"eager_over_compiled_median": times[eager]["median_s"] / times[compiled]["median_s"],
            "eager_over_compiled_min": times[eager]["min_s"] / times[compiled]["min_s"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    T = args.seq_len

    eager_fns = (chunk_module._chunk_forward, chunk_module._chunk_backward)
    compiled_fns = tuple(torch.compile(fn, dynamic=False) for fn in eager_fns)
    (o_eager, du_eager) = op_step(T, eager_fns)
    (o_comp, du_comp), op_compile_s = timed_first_call(lambda: op_step(T, compiled_fns))
    print(f"op: compiled in {op_compile_s:.0f} s", flush=True)
    op_times = time_interleaved({"eager": lambda: op_step(T, eager_fns), "compiled": lambda: op_step(T, compiled_fns)},
                                args.repeats, desc="op")
    chunk_module._chunk_forward, chunk_module._chunk_backward = eager_fns

    config = HopeConfig(vocab_size=4096, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        cms_levels=[{"intermediate_size": 256, "update_period": 1},
                                    {"intermediate_size": 128, "update_period": 8}])
    torch.manual_seed(0)
    model = HopeForCausalLM(config)
    input_ids = torch.randint(0, config.vocab_size, (1, T), generator=torch.Generator().manual_seed(1))
    compiled_model = torch.compile(model)
    loss_eager = model_step(model, input_ids)
    loss_comp, model_compile_s = timed_first_call(lambda: model_step(compiled_model, input_ids))
    print(f"model: compiled in {model_compile_s:.0f} s", flush=True)
    model_times = time_interleaved({"eager": lambda: model_step(model, input_ids),
                                    "compiled": lambda: model_step(compiled_model, input_ids)},
                                   args.repeats, desc="model")

    results = {
        "command": " ".join(["python", *sys.argv]),
        "seq_len": T,
        "op": {"shape": "B=1, H=4, d=64, chunk 64, fwd+bwd", "compile_s": op_compile_s,
               "max_abs_diff_output": (o_comp - o_eager).abs().max().item(),
               "max_abs_diff_grad_u": (du_comp - du_eager).abs().max().item(),
               "times": op_times, **summary(op_times, "eager", "compiled")},
        "model": {"shape": "tiny Hope (hidden 128, 2 layers, titans), one training step", "compile_s": model_compile_s,
                  "loss_diff": (loss_comp - loss_eager).abs().item(),
                  "times": model_times, **summary(model_times, "eager", "compiled")},
    }
    for part in ("op", "model"):
        r = results[part]
        print(f"{part}: eager/compiled {r['eager_over_compiled_median']:.2f}x (median), "
              f"{r['eager_over_compiled_min']:.2f}x (fastest); compile {r['compile_s']:.0f} s")
    write_results("bench_compile", results)


if __name__ == "__main__":
    main()
