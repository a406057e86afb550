"""Long context on CPU: prefill, decoding and memory of Hope (titans, hybrid) against a Llama of
matched size (SDPA, KV cache), prompts of 1K tokens and up, one process.

For every prompt length, every model (interleaved within a repeat; the median is kept):
- prefill: the prompt read under inference_mode through a fresh cache, in pieces of
  --prefill-chunk tokens (constant activation memory), logits of the last token only;
- decode: --decode-steps greedy steps after the prompt, each one timed (median ms/token);
- cache: bytes of every tensor the cache holds after the prompt;
- peak memory: the process's resident memory above its level before the prefill, sampled every
  5 ms while the first prefill runs.
Llama runs up to --llama-max-len (its prefill is quadratic); --million reads a 1M-token input
through Hope's cache in pieces (titans only). Writes outputs/bench_long_context.json
(--commit-results: evaluation/results/) and a PNG of prefill us/token, decode ms/token and
cache MB against the prompt length.

    python -m evaluation.benchmarks.bench_long_context                     # 1K-16K, ~15 min on 1 thread
    python -m evaluation.benchmarks.bench_long_context --lengths 1024 16384 65536 262144 --million
"""

import ctypes
import ctypes.util
import os
import threading
import time

import psutil
import torch

from evaluation.lib.models import ModelShape, build_model, matched_models
from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.timing import benchmark_parser, results_file, start, time_interleaved
from hope_hf.transformers_compat import CACHE_ARG, output_cache

MODELS = ("hope_titans", "hope_hybrid", "llama")


def release_free_memory() -> None:
    """Give the C allocator's free memory back to the OS (glibc's malloc_trim), so that what a
    model needs next shows as new resident memory rather than reused pages; a no-op elsewhere."""
    libc = ctypes.util.find_library("c")
    if libc and hasattr(ctypes.CDLL(libc), "malloc_trim"):
        ctypes.CDLL(libc).malloc_trim(0)


class PeakMemory:
    """The peak resident memory of this process above its level at entry (bytes), sampled; the
    allocator's free memory is released first (``release_free_memory``)."""

    def __init__(self, every_s: float = 0.005):
        self.every_s, self.process, self.peak = every_s, psutil.Process(os.getpid()), 0

    def __enter__(self):
        release_free_memory()
        self.base = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss - self.base)
            time.sleep(self.every_s)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss - self.base)


def cache_bytes(cache) -> int:
    """Bytes of every state tensor held by a transformers cache's layers (keys, values, conv and
    recurrent states); 0-dim tensors are counters (transformers 5.25's tokens seen), not states."""
    def walk(value):
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size() if value.dim() else 0
        if isinstance(value, dict):
            return sum(walk(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(walk(v) for v in value)
        return 0

    return sum(walk(vars(layer)) for layer in cache.layers)


@torch.inference_mode()
def prefill(model, ids: torch.Tensor, chunk: int):
    """Read ``ids`` (1, T) through a fresh cache in pieces of ``chunk``; returns (cache, last logits)."""
    cache = None
    for start_at in range(0, ids.shape[1], chunk):
        out = model(ids[:, start_at : start_at + chunk], **{CACHE_ARG: cache}, use_cache=True, logits_to_keep=1)
        cache = output_cache(out)
    return cache, out.logits[:, -1]


@torch.inference_mode()
def decode_ms(model, cache, logits, steps: int) -> list[float]:
    """Greedy steps from a filled cache, each timed (ms)."""
    times = []
    token = logits.argmax(-1, keepdim=True)
    for _ in range(steps):
        start_at = time.perf_counter()
        out = model(token, **{CACHE_ARG: cache}, use_cache=True)
        times.append(1e3 * (time.perf_counter() - start_at))
        cache, token = output_cache(out), out.logits[:, -1].argmax(-1, keepdim=True)
    return times


def measure_length(models: dict, length: int, args) -> list[dict]:
    ids = torch.randint(3, args.vocab_size, (1, length), generator=torch.Generator().manual_seed(length))
    rows = {}
    for name, model in models.items():  # the first prefill of each model: its peak memory, cache and decode
        with PeakMemory() as memory:
            cache, logits = prefill(model, ids, args.prefill_chunk)
        steps = decode_ms(model, cache, logits, args.decode_steps)
        rows[name] = {"model": name, "length": length, "cache_bytes": cache_bytes(cache), "peak_memory_bytes": memory.peak,
                      "decode_ms_median": sorted(steps)[len(steps) // 2], "decode_ms_all": steps}
        del cache
    repeats = args.repeats if length <= args.repeat_up_to else 1
    timings = time_interleaved({name: (lambda m=m: prefill(m, ids, args.prefill_chunk)) for name, m in models.items()},
                               repeats=repeats, warmup=0, desc=f"prefill {length}")
    for name, timing in timings.items():
        rows[name].update(prefill_s=timing["median_s"], prefill_us_per_token=1e6 * timing["median_s"] / length,
                          prefill_all_s=timing["all_s"])
    return list(rows.values())


def plot(rows: list[dict], path) -> None:
    fig, axes = pyplot().subplots(1, 3, figsize=(14, 4))
    panels = (("prefill_us_per_token", "prefill (us/token)"), ("decode_ms_median", "decode (ms/token)"),
              ("cache_bytes", "cache (MB)"))
    for ax, (key, label) in zip(axes, panels):
        for name in dict.fromkeys(r["model"] for r in rows):
            mine = [r for r in rows if r["model"] == name and key in r]
            scale = 1e-6 if key == "cache_bytes" else 1
            ax.plot([r["length"] for r in mine], [r[key] * scale for r in mine], marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    save_figure(fig, path)


def main(argv=None):
    parser = benchmark_parser(__doc__, "bench_long_context", threads=1, repeats=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384])
    parser.add_argument("--llama-max-len", type=int, default=32768, help="Llama runs up to this prompt length")
    parser.add_argument("--prefill-chunk", type=int, default=4096, help="prompt tokens per forward through the cache")
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--repeat-up-to", type=int, default=16384, help="longer prompts are timed once")
    parser.add_argument("--million", action="store_true", help="also read 1M tokens through titans' cache in pieces")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--target-non-embedding", type=int, default=3_200_000)
    args = start(parser, argv)
    for name in ("prefill_chunk", "decode_steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    shape = ModelShape(hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.hidden_size // 64,
                       vocab_size=args.vocab_size, block_size=max(args.lengths), target_non_embedding=args.target_non_embedding)
    sizes = matched_models(args.models, shape, tolerance=0.02)
    models = {name: build_model(name, shape, sizes[name]["mlp_size"]).eval() for name in args.models}
    results = results_file(args, "evaluation.benchmarks.bench_long_context", argv, "bench_long_context")
    results.save(parameters=sizes, shape=vars(shape))
    rows = []
    for length in sorted(args.lengths):
        present = {n: m for n, m in models.items() if n != "llama" or length <= args.llama_max_len}
        rows += measure_length(present, length, args)
        results.save(rows=rows)  # a long run keeps what it measured
        for r in rows[-len(present):]:
            print(f"{length:>8} {r['model']:12} prefill {r['prefill_us_per_token']:8.1f} us/token, decode "
                  f"{r['decode_ms_median']:7.2f} ms/token, cache {r['cache_bytes'] / 1e6:8.2f} MB, "
                  f"peak +{r['peak_memory_bytes'] / 1e6:8.1f} MB", flush=True)
    if args.million and "hope_titans" in models:
        length = 1 << 20
        ids = torch.randint(3, args.vocab_size, (1, length), generator=torch.Generator().manual_seed(length))
        with PeakMemory() as memory:
            start_at = time.perf_counter()
            cache, _ = prefill(models["hope_titans"], ids, args.prefill_chunk)
            seconds = time.perf_counter() - start_at
        million = {"model": "hope_titans", "length": length, "prefill_s": seconds, "prefill_us_per_token": 1e6 * seconds / length,
                   "cache_bytes": cache_bytes(cache), "peak_memory_bytes": memory.peak}
        results.save(million=million)
        print(f"1M tokens through titans' cache: {seconds:.0f} s, cache {million['cache_bytes'] / 1e6:.2f} MB, "
              f"peak +{memory.peak / 1e6:.0f} MB")
    plot(rows, results.path.with_suffix(".png"))
    results.save()
    print(f"wrote {results.path} and {results.path.with_suffix('.png').name}")
    return results.saved


if __name__ == "__main__":
    main()
