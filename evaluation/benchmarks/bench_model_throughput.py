"""Training throughput on CPU: HopeForCausalLM (titans mixer) vs a LlamaForCausalLM of the same
width, depth, heads, MLP size and vocabulary. One step = forward + backward + AdamW step, batch 1.

    python evaluation/benchmarks/bench_model_throughput.py [--seq-lens 1024 4096 --repeats 3]
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, time_interleaved, write_results  # noqa: E402

from hope_hf import HopeConfig, HopeForCausalLM  # noqa: E402


def build_models(args):
    shared = dict(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, max_position_embeddings=max(args.seq_lens),
    )
    hope = HopeForCausalLM(HopeConfig(mixer="titans", titans_chunk_size=args.chunk_size, **shared))
    llama = LlamaForCausalLM(LlamaConfig(**shared, attn_implementation="sdpa"))
    return {"hope": hope.train(), "llama": llama.train()}


def train_step_fn(model, seq_len, vocab_size):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab_size, (1, seq_len))

    def step():
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--intermediate-size", type=int, default=688)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    models = build_models(args)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    rows = []
    for seq_len in tqdm(args.seq_lens, desc="sequence lengths"):
        fns = {name: train_step_fn(m, seq_len, args.vocab_size) for name, m in models.items()}
        seconds = time_interleaved(fns, repeats=args.repeats)
        tokens_per_s = {name: seq_len / s for name, s in seconds.items()}
        ratio = tokens_per_s["hope"] / tokens_per_s["llama"]
        rows.append({"seq_len": seq_len, "tokens_per_s": tokens_per_s, "hope_over_llama": ratio})
        print(f"T={seq_len}: hope {tokens_per_s['hope']:.0f} tok/s, llama {tokens_per_s['llama']:.0f} tok/s, ratio {ratio:.2f}")
    write_results("bench_model_throughput", {"config": vars(args), "parameters": params, "results": rows})

    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.35
    xs = range(len(rows))
    for offset, name in [(-width / 2, "hope"), (width / 2, "llama")]:
        ax.bar([x + offset for x in xs], [r["tokens_per_s"][name] for r in rows], width, label=f"{name} ({params[name] / 1e6:.1f}M params)")
    ax.set_xticks(list(xs), [f"T={r['seq_len']}" for r in rows])
    ax.set_ylabel("training tokens/s (CPU, 2 threads)")
    ax.set_title("HopeForCausalLM (titans) vs LlamaForCausalLM")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "bench_model_throughput.png", dpi=120)


if __name__ == "__main__":
    main()
