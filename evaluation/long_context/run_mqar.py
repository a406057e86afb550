"""Multi-query associative recall (MQAR, Zoology) at tiny scale on CPU: three mixers trained
the same way on the same data, accuracy on held-out sequences vs training steps.

    python evaluation/long_context/run_mqar.py                      # the default comparison, 6 min on 2 shared cores (load ~3.5)
    python evaluation/long_context/run_mqar.py --variants attention --steps 100 --num-kv-pairs 4

Variants (hope_hf.evaluation.mqar.MIXER_VARIANTS): titans (self-referential Titans, the Hope
default), attention (Hope-Attention) and titans_static (titans_self_referential=False: the
projections stay with the meta-learned initial memories, a Gated-DeltaNet-like ablation).
Every variant gets the same seed, batches, held-out set, optimizer (AdamW, warm-up + cosine)
and number of steps, at every learning rate of --learning-rates; as in Zoology, a variant is
reported at its best learning rate (highest final held-out accuracy). Writes
evaluation/results/mqar.json (every run) and mqar.png (accuracy and loss vs step).
"""

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from hope_hf.evaluation.mqar import MIXER_VARIANTS, MQARTask, mqar_model_config, train_mqar  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = ROOT / "evaluation" / "results" / "mqar.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(MIXER_VARIANTS), choices=list(MIXER_VARIANTS))
    parser.add_argument("--vocab-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--num-kv-pairs", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--titans-chunk-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rates", nargs="+", type=float, default=[3e-3, 1e-2],
                        help="every variant is trained at each; the best final accuracy is reported")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-examples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON path; the PNG goes beside it")
    return parser.parse_args(argv)


def plot_curves(runs: dict, best: dict, title: str, path: Path) -> None:
    """Held-out answer accuracy and loss vs training step: each variant at its best learning rate
    (solid), its other learning rates dashed."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = dict(zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for name, by_lr in runs.items():
        for lr, run in by_lr.items():
            steps = [point["step"] for point in run["eval"]]
            style = dict(color=colors[name], marker="o", markersize=3)
            if lr == best[name]:
                style["label"] = f"{name} (lr {lr})"
            else:
                style.update(linestyle="--", alpha=0.5, linewidth=1, label=f"{name} (lr {lr})")
            acc_ax.plot(steps, [point["accuracy"] for point in run["eval"]], **style)
            loss_ax.plot(steps, [point["loss"] for point in run["eval"]], **style)
    acc_ax.set(xlabel="training step", ylabel="held-out answer accuracy", ylim=(0, 1.02), title="accuracy")
    loss_ax.set(xlabel="training step", ylabel="held-out answer loss", title="loss (answers only)")
    acc_ax.legend(fontsize=7)
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    task = MQARTask(vocab_size=args.vocab_size, seq_len=args.seq_len, num_kv_pairs=args.num_kv_pairs)
    runs = {}  # variant -> learning rate (str) -> run
    for name in args.variants:
        config = mqar_model_config(name, task, hidden_size=args.hidden_size, num_layers=args.num_layers,
                                   num_heads=args.num_heads, titans_chunk_size=args.titans_chunk_size)
        runs[name] = {}
        for learning_rate in args.learning_rates:
            start = time.perf_counter()
            run = train_mqar(config, task, steps=args.steps, batch_size=args.batch_size, learning_rate=learning_rate,
                             eval_every=args.eval_every, eval_examples=args.eval_examples, seed=args.seed,
                             description=f"{name} lr {learning_rate:g}")
            run["seconds"] = round(time.perf_counter() - start, 1)
            runs[name][f"{learning_rate:g}"] = run
    best = {name: max(by_lr, key=lambda lr: by_lr[lr]["final_accuracy"]) for name, by_lr in runs.items()}

    chance = 1 / (args.vocab_size - args.vocab_size // 2)
    print(f"\nheld-out answer accuracy after {args.steps} steps (chance {chance:.3f}: a value picked at random)")
    print(f"{'variant':<14} " + " ".join(f"{'lr ' + lr:>10}" for lr in runs[args.variants[0]]) + "   params")
    for name, by_lr in runs.items():
        cells = " ".join(f"{run['final_accuracy']:>10.3f}" for run in by_lr.values())
        print(f"{name:<14} {cells}   {next(iter(by_lr.values()))['num_parameters']:,}")

    payload = {
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], ROOT) if argv is None else "run_mqar.py",
                                           *(sys.argv[1:] if argv is None else argv)]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "chance_accuracy": chance,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count(), "loadavg_1_5_15min_at_end": os.getloadavg()},
        "best_learning_rate": best,
        "final_accuracy": {name: runs[name][best[name]]["final_accuracy"] for name in runs},
        "final_accuracy_by_learning_rate": {name: {lr: run["final_accuracy"] for lr, run in by_lr.items()}
                                            for name, by_lr in runs.items()},
        "seconds_total": round(sum(run["seconds"] for by_lr in runs.values() for run in by_lr.values()), 1),
        "model": {"hidden_size": args.hidden_size, "num_hidden_layers": args.num_layers,
                  "num_attention_heads": args.num_heads, "titans_chunk_size": args.titans_chunk_size,
                  "cms_levels": "one SwiGLU level of 2 * hidden_size", "tie_word_embeddings": True,
                  "num_parameters": {name: next(iter(by_lr.values()))["num_parameters"] for name, by_lr in runs.items()}},
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=1))
    plot_path = args.output.with_suffix(".png")
    plot_curves(runs, best, f"MQAR: {args.num_kv_pairs} pairs, seq {args.seq_len}, vocab {args.vocab_size}; "
                            f"d={args.hidden_size}, {args.num_layers} layers, AdamW, batch {args.batch_size}", plot_path)
    print(f"wrote {args.output} and {plot_path}")
    return payload


if __name__ == "__main__":
    main()
