"""M3 vs AdamW vs torch.optim.Muon (+ AdamW for non-matrix parameters), several seeds, on
(a) scikit-learn's bundled digits (an MLP classifier; real data, no download) and
(b) a tiny Hope language model on the embedded English text (hope_hf's web_en_sample.txt, split
    by ``evaluation.lib.corpora``: the BPE and the training blocks from its training split, the
    reported loss on its test split).
Reports final loss / accuracy, and loss per step and per wall-clock second. Every run (task, seed,
optimizer) is recorded as it ends; --resume runs only the missing ones.

    python -m evaluation.benchmarks.bench_m3 [--seeds 3 --digits-steps 300 --lm-steps 60]
Writes outputs/bench_m3.json and .png (--commit-results: evaluation/results/).
"""

import statistics
import time

import torch
from torch import nn

from evaluation.lib.corpora import prepare_corpus
from evaluation.lib.results import run_cells
from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.timing import benchmark_parser, results_file, start
from evaluation.lib.training import OptimizerSpec, make_optimizers
from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.data import sample_text_path
from hope_hf.training import train_steps

LRS = {"adamw": 3e-3, "muon": 0.02, "m3": 1e-6}  # matrix learning rates; AdamW parts use 3e-3
# torch's AdamW defaults (betas 0.9/0.999, weight decay 0.01) and Muon's (weight decay 0.1, which
# make_optimizers also gives Muon's AdamW part); M3 at its own defaults, without weight decay as M3.from_model has it
OPTIMIZERS = {"adamw": OptimizerSpec("adamw", lr=LRS["adamw"], betas=(0.9, 0.999), weight_decay=0.01),
              "muon": OptimizerSpec("muon", lr=LRS["muon"], adamw_lr=3e-3, betas=(0.9, 0.999), weight_decay=0.1),
              "m3": OptimizerSpec("m3", lr=LRS["m3"], adamw_lr=3e-3, weight_decay=0.0, m3_eps=1e-5,
                                  m3_momentum_decay=0.95, m3_variance="ema")}

plt = pyplot()


class DigitsMLP(nn.Sequential):
    """No embeddings and no LM head: every weight matrix goes to Muon / M3 (make_optimizers)."""

    def get_input_embeddings(self):
        return nn.Identity()

    get_output_embeddings = get_input_embeddings


def digits_task(seed):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train_idx, test_idx = order[:1400], order[1400:]
    torch.manual_seed(seed)
    model = DigitsMLP(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
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


def lm_task(seed, blocks, vocab_size):
    torch.manual_seed(seed)
    config = HopeConfig(vocab_size=vocab_size, hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                        num_attention_heads=4, titans_chunk_size=32,
                        cms_levels=[{"intermediate_size": 192, "update_period": 1}])
    model = HopeForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    train, test = blocks["train"], blocks["test"][:16]

    def batch():
        ids = train[torch.randint(0, len(train), (8,), generator=gen)]
        return model(ids, labels=ids).loss

    def evaluate():
        with torch.no_grad():
            return {"test_loss": model(test, labels=test).loss.item()}

    return model, batch, evaluate


def run(task, name, steps):
    """``steps`` optimizer steps (no clipping, a constant learning rate) on hope_hf.training.train_steps."""
    model, batch, evaluate = task()
    started = []  # when each step began: step s ended about when step s + 1 began

    def backward(step):
        started.append(time.perf_counter())
        loss = batch()
        loss.backward()
        return loss.detach()

    start_time = time.perf_counter()
    trained = train_steps(model, make_optimizers(model, OPTIMIZERS[name]), backward, steps, max_grad_norm=None,
                          lr_factor=None, description=name, progress=False)
    ended = [*started[1:], time.perf_counter()]
    curve = [{"step": step, "loss": loss, "seconds": end - start_time}
             for step, (loss, end) in enumerate(zip(trained["train_loss"], ended), start=1)]
    return {"curve": curve, **evaluate(), "seconds": time.perf_counter() - start_time}


def summarize(runs: list[dict]) -> dict:
    """{task: {optimizer: mean of every metric over the seeds}}."""
    summary = {}
    for r in runs:
        summary.setdefault(r["task"], {}).setdefault(r["optimizer"], []).append(r)
    metrics = lambda rs: [k for k in rs[0] if k not in ("task", "seed", "optimizer", "curve")]  # noqa: E731
    return {task: {name: {m: statistics.mean(r[m] for r in rs) for m in metrics(rs)} for name, rs in by_opt.items()}
            for task, by_opt in summary.items()}


def plot(runs: list[dict], json_path) -> None:
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    fig, axes = plt.subplots(1, 2 * len(tasks), figsize=(8 * len(tasks), 3.6), squeeze=False)
    axes = axes[0]
    for col, task in enumerate(tasks):
        for name in LRS:
            rs = [r for r in runs if r["task"] == task and r["optimizer"] == name]
            if not rs:
                continue
            steps = range(len(rs[0]["curve"]))
            mean_loss = [statistics.mean(r["curve"][i]["loss"] for r in rs) for i in steps]
            mean_time = [statistics.mean(r["curve"][i]["seconds"] for r in rs) for i in steps]
            axes[2 * col].plot(range(1, len(mean_loss) + 1), mean_loss, label=name)
            axes[2 * col + 1].plot(mean_time, mean_loss, label=name)
        axes[2 * col].set(title=f"{task}: loss per step", xlabel="step", yscale="log")
        axes[2 * col + 1].set(title=f"{task}: loss per second", xlabel="seconds", yscale="log")
    axes[0].legend()
    fig.tight_layout()
    save_figure(fig, json_path, dpi=110)


def main(argv=None):
    parser = benchmark_parser(__doc__, "bench_m3", threads=2, resume=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--digits-steps", type=int, default=300)
    parser.add_argument("--lm-steps", type=int, default=60)
    args = start(parser, argv, seed=None)
    tokenizer, blocks = prepare_corpus(str(sample_text_path()), 1024, 64)

    tasks = {"digits": (lambda seed: lambda: digits_task(seed), args.digits_steps),
             "hope_lm": (lambda seed: lambda: lm_task(seed, blocks, len(tokenizer)), args.lm_steps)}
    results = results_file(args, __spec__.name, argv, "bench_m3", resume=args.resume)
    results.save(learning_rates=LRS)
    # optimizers interleaved within each seed
    cells = [{"task": task, "seed": seed, "optimizer": name}
             for task in tasks for seed in range(args.seeds) for name in LRS]
    runs = run_cells(results, cells, lambda c: run(tasks[c["task"]][0](c["seed"]), c["optimizer"], tasks[c["task"]][1]))
    summary = summarize(runs)
    for task, by_opt in summary.items():
        for name, metrics in by_opt.items():
            print(task, name, {k: round(v, 4) for k, v in metrics.items()})
    path = results.save(summary=summary)
    print(f"wrote {path}")
    plot(runs, path)


if __name__ == "__main__":
    main()
