"""Linear scaling of one titans layer: forward time (no grad) at T = 1K .. 16K on CPU; time per
token should stay flat (chunks run in sequence, each O(C^2 d + C d^2)).

    python evaluation/benchmarks/bench_titans_scaling.py [--seq-lens 1024 2048 4096 8192 16384]
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, time_interleaved, write_results  # noqa: E402

from hope_hf import HopeConfig  # noqa: E402
from hope_hf.modeling import HopeTitansMixer  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    config = HopeConfig(hidden_size=args.hidden_size, num_attention_heads=args.heads, num_hidden_layers=1,
                        titans_chunk_size=args.chunk_size)
    layer = HopeTitansMixer(config, layer_idx=0).eval()
    rows = []
    for seq_len in tqdm(args.seq_lens, desc="sequence lengths"):
        x = torch.randn(1, seq_len, args.hidden_size)
        with torch.no_grad():
            seconds = time_interleaved({"titans": lambda: layer(x)}, repeats=args.repeats)["titans"]
        rows.append({"seq_len": seq_len, "seconds": seconds, "us_per_token": 1e6 * seconds / seq_len})
        print(f"T={seq_len}: {seconds:.3f} s, {rows[-1]['us_per_token']:.1f} us/token")
    per_token = [r["us_per_token"] for r in rows]
    flatness = max(per_token) / min(per_token)
    write_results("bench_titans_scaling", {"config": vars(args), "results": rows,
                                           "max_over_min_time_per_token": flatness})

    fig, ax = plt.subplots(figsize=(6, 4))
    lens = [r["seq_len"] for r in rows]
    ax.loglog(lens, [r["seconds"] for r in rows], "o-", label="titans layer forward")
    ax.loglog(lens, [rows[0]["seconds"] * n / lens[0] for n in lens], "--", label="linear reference")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("seconds (CPU, 2 threads)")
    ax.set_title(f"titans layer: time/token max/min = {flatness:.2f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "bench_titans_scaling.png", dpi=120)


if __name__ == "__main__":
    main()
