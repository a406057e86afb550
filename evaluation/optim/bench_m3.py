"""M3 vs AdamW vs torch.optim.Muon (+ AdamW for non-matrix parameters), several seeds, on
(a) scikit-learn's bundled digits (an MLP classifier; real data, no download) and
(b) a tiny Hope language model on the embedded English text.
Reports final loss / accuracy, and loss per step and per wall-clock second.

    python evaluation/optim/bench_m3.py [--seeds 3 --digits-steps 300 --lm-steps 60]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import RESULTS, write_results  # noqa: E402

from hope_hf import M3, HopeConfig, HopeForCausalLM  # noqa: E402
from hope_hf.data import sample_text_path  # noqa: E402
from hope_hf.training import build_datasets, train_bpe_tokenizer  # noqa: E402

LRS = {"adamw": 3e-3, "muon": 0.02, "m3": 1e-3}  # matrix learning rates; AdamW parts use 3e-3


class MuonWithAdamW:
    """torch.optim.Muon takes 2-D parameters only: the rest goes to AdamW."""

    def __init__(self, model, lr):
        matrices = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n and "lm_head" not in n]
        ids = {id(p) for p in matrices}
        self.optimizers = [torch.optim.Muon(matrices, lr=lr),
                           torch.optim.AdamW([p for p in model.parameters() if id(p) not in ids], lr=3e-3)]

    def step(self):
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self):
        for opt in self.optimizers:
            opt.zero_grad()


def make_optimizer(name, model):
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=LRS["adamw"])
    if name == "muon":
        return MuonWithAdamW(model, LRS["muon"])
    return M3.from_model(model, lr=LRS["m3"], adamw_lr=3e-3)


def digits_task(seed):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train_idx, test_idx = order[:1400], order[1400:]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    gen = torch.Generator().manual_seed(seed)

    def batch():
        idx = train_idx[torch.randint(0, len(train_idx), (64,), generator=gen)]
        return nn.functional.cross_entropy(model(x[idx]), y[idx])

    def evaluate():
        with torch.no_grad():
            logits = model(x[test_idx])
            return {"test_loss": nn.functional.cross_entropy(logits, y[test_idx]).item(),
                    "test_accuracy": (logits.argmax(-1) == y[test_idx]).float().mean().item()}

    return model, batch, evaluate


def lm_task(seed, blocks, held_out, vocab_size):
    torch.manual_seed(seed)
    config = HopeConfig(vocab_size=vocab_size, hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                        num_attention_heads=4, titans_chunk_size=32,
                        cms_levels=[{"intermediate_size": 192, "update_period": 1}])
    model = HopeForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)

    def batch():
        ids = blocks[torch.randint(0, len(blocks), (8,), generator=gen)]
        return model(ids, labels=ids).loss

    def evaluate():
        with torch.no_grad():
            return {"test_loss": model(held_out[:16], labels=held_out[:16]).loss.item()}

    return model, batch, evaluate


def run(task_fn, name, steps):
    model, batch, evaluate = task_fn()
    optimizer = make_optimizer(name, model)
    curve, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        loss = batch()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        curve.append({"step": step, "loss": loss.item(), "seconds": time.perf_counter() - start})
    return {"curve": curve, **evaluate(), "seconds": time.perf_counter() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--digits-steps", type=int, default=300)
    parser.add_argument("--lm-steps", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(2)
    lines = sample_text_path().read_text().splitlines()
    tokenizer = train_bpe_tokenizer(lines, 1024)
    train_blocks, held_out = build_datasets([str(sample_text_path())], tokenizer, 64, eval_fraction=0.1)
    blocks, held = train_blocks[:]["input_ids"], held_out[:]["input_ids"]

    tasks = {
        "digits": (lambda seed: (lambda: digits_task(seed)), args.digits_steps),
        "hope_lm": (lambda seed: (lambda: lm_task(seed, blocks, held, len(tokenizer))), args.lm_steps),
    }
    results = {}
    for task, (make, steps) in tasks.items():
        results[task] = {name: [] for name in LRS}
        for seed in tqdm(range(args.seeds), desc=task):
            for name in LRS:  # optimizers interleaved within each seed
                results[task][name].append(run(make(seed), name, steps))
    summary = {
        task: {
            name: {metric: statistics.mean(r[metric] for r in runs) for metric in runs[0] if metric != "curve"}
            for name, runs in by_opt.items()
        }
        for task, by_opt in results.items()
    }
    for task, by_opt in summary.items():
        for name, metrics in by_opt.items():
            print(task, name, {k: round(v, 4) for k, v in metrics.items()})
    write_results("bench_m3", {"config": vars(args), "learning_rates": LRS, "summary": summary, "runs": results})

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for col, (task, by_opt) in enumerate(results.items()):
        for name, runs in by_opt.items():
            mean_loss = [statistics.mean(r["curve"][i]["loss"] for r in runs) for i in range(len(runs[0]["curve"]))]
            mean_time = [statistics.mean(r["curve"][i]["seconds"] for r in runs) for i in range(len(runs[0]["curve"]))]
            axes[2 * col].plot(range(1, len(mean_loss) + 1), mean_loss, label=name)
            axes[2 * col + 1].plot(mean_time, mean_loss, label=name)
        axes[2 * col].set(title=f"{task}: loss per step", xlabel="step", yscale="log")
        axes[2 * col + 1].set(title=f"{task}: loss per second", xlabel="seconds", yscale="log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "bench_m3.png", dpi=110)


if __name__ == "__main__":
    main()
