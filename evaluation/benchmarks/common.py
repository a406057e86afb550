"""Timing helpers shared by the benchmarks.

Every side of a comparison runs in one process, interleaved (A, B, A, B, ...), and the median of
the repeats is reported: these machines are shared and noisy, so only ratios taken this way are
meaningful. Oversubscribed cores (load average well above the core count) hurt the many
small ops of the chunked memory far more than attention's few large ones, so a run under load
understates Hope; the JSON records the load average for that reason.
"""

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

RESULTS = Path(__file__).resolve().parents[1] / "results"


def time_interleaved(fns: dict, repeats: int, warmup: int = 1, desc: str = "timing") -> dict[str, dict]:
    """Run every fn() once per repeat, alternating between them; returns
    {name: {"median_s", "min_s", "all_s"}}."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in tqdm(range(repeats), desc=desc, leave=False):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "all_s": t} for name, t in times.items()}


def write_results(name: str, payload: dict, results_dir: Path = RESULTS) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            # >> cpu_count means other processes competed for the cores during the run
            "loadavg_1_5_15min_at_end": os.getloadavg(),
        },
        **payload,
    }
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path
