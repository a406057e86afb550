"""One prepared GPU check (scripts/gpu_check.sh), for a session that is lent a GPU: a few minutes.

1. tests: the fused kernels' and the op's tests on the GPU (tests/test_ops_fused_chunk.py,
   tests/test_ops_self_referential.py), pass/fail counts;
2. kernels: bench_kernels at T = 2K and 8K, B=4, H=8, d = 64 and 128 (fused, the per-chunk fla
   bridge, fla's own chunk_gated_delta_rule as the anchor, SDPA), bf16;
3. training: one step (forward, backward, AdamW) of a Hope-125M (titans) against a Llama-125M,
   bf16 autocast, batch 4 x 2048 tokens, interleaved; tokens/s and peak GPU memory.
Every part writes into one JSON (outputs/gpu_check.json; --commit-results: evaluation/results/),
after each part, so a run cut short keeps what it measured. A part that fails is recorded with
its error and the next one runs.

    bash scripts/gpu_check.sh                                 # on a GPU
    python -m evaluation.benchmarks.gpu_check --smoke         # CPU: the same plumbing at tiny sizes
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from evaluation.lib.timing import benchmark_parser, results_file, time_interleaved
from hope_hf import HopeConfig, HopeForCausalLM

ROOT = Path(__file__).resolve().parents[2]
TESTS = ["tests/test_ops_fused_chunk.py", "tests/test_ops_self_referential.py"]
# ~125M parameters each (GPT-2 small's width and depth), vocab 32K
SIZE_125M = dict(vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048)
SIZE_SMOKE = dict(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def run_tests(smoke: bool) -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
    if smoke:
        command += ["-k", "dispatch or bad_inputs"]
    env = {**os.environ, **({"TRITON_INTERPRET": "1"} if smoke else {})}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    summary = (result.stdout.strip().splitlines() or [""])[-1]
    return {"ok": result.returncode == 0, "command": " ".join(command[1:]), "returncode": result.returncode, "summary": summary,
            "seconds": round(time.perf_counter() - start, 1), "tail": result.stdout[-3000:] if result.returncode else ""}


def run_kernels(smoke: bool, output: Path, repeats: int) -> dict:
    args = ["--smoke"] if smoke else ["--seq-lens", "2048", "8192", "--head-dims", "64", "128", "--heads", "8",
                                      "--batch-size", "4", "--repeats", str(repeats)]
    command = [sys.executable, "-m", "evaluation.benchmarks.bench_kernels", *args, "--output", str(output)]
    env = {**os.environ, **({"TRITON_INTERPRET": "1"} if smoke else {})}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"bench_kernels failed: {result.stderr[-2000:]}")
    return json.loads(output.read_text())


def training_step_models(size: dict, device: str):
    hope = HopeForCausalLM(HopeConfig(**size, mixer="titans", titans_chunk_size=64)).to(device)
    llama = LlamaForCausalLM(LlamaConfig(**size)).to(device)
    return {"hope_titans": hope, "llama": llama}


def run_training(smoke: bool, repeats: int) -> dict:
    device = "cpu" if smoke else "cuda"
    size = SIZE_SMOKE if smoke else SIZE_125M
    batch, length = (2, 64) if smoke else (4, 2048)
    ids = torch.randint(0, size["vocab_size"], (batch, length), device=device)
    models = training_step_models(size, device)
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}

    def step(name):
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = models[name](input_ids=ids, labels=ids).loss
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()

    timings = time_interleaved({name: (lambda n=name: step(n)) for name in models}, repeats=repeats, warmup=1,
                               desc="training steps")
    rows = {name: {"parameters": sum(p.numel() for p in m.parameters()), "step_s": timings[name]["median_s"],
                   "tokens_per_s": batch * length / timings[name]["median_s"], "step_s_all": timings[name]["all_s"]}
            for name, m in models.items()}
    if device == "cuda":
        for name in models:  # peak memory of one more step of each model alone
            torch.cuda.reset_peak_memory_stats()
            step(name)
            rows[name]["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    return {"device": device, "batch": batch, "length": length, "dtype": "bf16 autocast", "models": rows,
            "hope_over_llama_tokens_per_s": rows["hope_titans"]["tokens_per_s"] / rows["llama"]["tokens_per_s"]}


def main(argv=None):
    parser = benchmark_parser(__doc__, "gpu_check", threads=None, repeats=5)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, the Triton interpreter: checks the plumbing")
    parser.add_argument("--parts", nargs="+", default=["tests", "kernels", "training"], choices=["tests", "kernels", "training"])
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA GPU (or --smoke on CPU)")
    device = "cpu" if args.smoke else "cuda"
    results = results_file(args, __spec__.name, argv, "gpu_check_smoke" if args.smoke else "gpu_check", device=device)
    results.save(gpu=torch.cuda.get_device_name() if device == "cuda" else None, parts={})
    parts = {}
    runners = {"tests": lambda: run_tests(args.smoke),
               "kernels": lambda: run_kernels(args.smoke, results.path.with_name(results.path.stem + "_kernels.json").resolve(),
                                              args.repeats),
               "training": lambda: run_training(args.smoke, args.repeats)}
    for part in args.parts:
        start = time.perf_counter()
        try:
            parts[part] = {"ok": True, **runners[part]()}
        except Exception as error:  # record it, go on with the next part
            parts[part] = {"ok": False, "error": f"{type(error).__name__}: {error}"[-3000:]}
        parts[part]["part_seconds"] = round(time.perf_counter() - start, 1)
        print(f"{part}: {'ok' if parts[part]['ok'] else parts[part]['error'][:200]} ({parts[part]['part_seconds']} s)",
              flush=True)
        results.save(parts=parts)
    print(f"wrote {results.path}")
    return results.saved


if __name__ == "__main__":
    main()
