"""Chunked torch path vs token-by-token reference of the self-referential gated delta rule:
forward + backward at T=2048 (CPU, fp32).

    python evaluation/benchmarks/bench_ops.py [--seq-len 2048 --heads 4 --head-dim 32 --chunk-size 64]
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import time_interleaved, write_results  # noqa: E402

from hope_hf.ops import chunk_self_referential_gated_delta_rule, naive_self_referential_gated_delta_rule, state_width


def make_inputs(T, H, d):
    u = F.normalize(torch.randn(1, T, H, d), dim=-1).requires_grad_()
    q = F.normalize(torch.randn(1, T, H, d), dim=-1).requires_grad_()
    b_eta = torch.zeros(H, requires_grad=True)
    b_alpha = torch.full((H,), 2.0, requires_grad=True)
    state = (0.02 * torch.randn(1, H, d, state_width(d))).requires_grad_()
    return u, q, b_eta, b_alpha, state


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    inputs = make_inputs(args.seq_len, args.heads, args.head_dim)

    def fwd_bwd(kernel):
        def run():
            o, state, _ = kernel(*inputs, args.chunk_size)
            (o.sum() + state.sum()).backward()
        return run

    seconds = time_interleaved(
        {"reference": fwd_bwd(naive_self_referential_gated_delta_rule), "chunked": fwd_bwd(chunk_self_referential_gated_delta_rule)},
        repeats=args.repeats,
    )
    speedup = seconds["reference"] / seconds["chunked"]
    print(f"T={args.seq_len}: reference {seconds['reference']:.3f} s, chunked {seconds['chunked']:.3f} s, speed-up {speedup:.1f}x")
    write_results("bench_ops", {"config": vars(args), "seconds_fwd_bwd": seconds, "speedup_chunked_over_reference": speedup})


if __name__ == "__main__":
    main()
