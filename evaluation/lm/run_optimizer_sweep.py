"""Optimizer sweep on the LM comparison's models: AdamW, torch.optim.Muon (+ AdamW for embeddings,
the LM head and non-matrix parameters) and the project's M3 (+ the same AdamW part), each at
several learning rates, same steps, same tokens in the same order, several seeds. M3's eps is a
sweep axis too. Reports, per model and optimizer, the held-out loss at every rate (mean and
spread over seeds) and the best rate.

    python evaluation/lm/run_optimizer_sweep.py                        # Hope titans + Llama, English, tiny
    python evaluation/lm/run_optimizer_sweep.py --models hope_titans --steps 200 --seeds 0 1 2 \
        --m3-eps 1e-2 1e-3

Writes evaluation/results/lm_optimizer_sweep_<corpus>.json and .png (or --output).
"""

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_common import MODELS, ModelShape, OptimizerSpec, RunSettings, build_model, matched_models, prepare_data, train_one  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"

# matrix learning rates; each list spans 30x
DEFAULT_LRS = {"adamw": [1e-3, 3e-3, 1e-2, 3e-2], "muon": [3e-3, 1e-2, 3e-2, 1e-1], "m3": [3e-4, 1e-3, 3e-3, 1e-2]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="english")
    parser.add_argument("--models", nargs="+", default=["hope_titans", "llama"], choices=MODELS)
    parser.add_argument("--optimizers", nargs="+", default=list(DEFAULT_LRS), choices=list(DEFAULT_LRS))
    for name, lrs in DEFAULT_LRS.items():
        parser.add_argument(f"--lrs-{name}", nargs="+", type=float, default=lrs, help=f"default {lrs}")
    parser.add_argument("--m3-eps", nargs="+", type=float, default=[1e-2], help="M3's eps values to sweep")
    parser.add_argument("--m3-momentum-decay", nargs="+", type=float, default=[1.0],
                        help="M3's momentum decay mu values to sweep (1.0: Algorithm 1's summed momenta)")
    parser.add_argument("--adamw-lr", type=float, default=3e-3, help="lr of the AdamW part of muon and m3")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-blocks", type=int, default=32)
    parser.add_argument("--final-eval-blocks", type=int, default=128)
    for name in ("hidden_size", "num_layers", "num_heads", "vocab_size", "block_size", "target_non_embedding",
                 "titans_chunk_size"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, help="override the tiny model shape")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output")
    parser.add_argument("--resume", action="store_true",
                        help="add to the runs in --output: runs already there (model, seed, optimizer) are skipped")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def optimizer_grid(args) -> list[OptimizerSpec]:
    specs = []
    for name in args.optimizers:
        m3_axes = itertools.product(args.m3_eps, args.m3_momentum_decay) if name == "m3" else [(None, None)]
        for lr, (eps, decay) in itertools.product(getattr(args, f"lrs_{name}"), list(m3_axes)):
            spec = OptimizerSpec(name=name, lr=lr, adamw_lr=lr if name == "adamw" else args.adamw_lr)
            specs.append(spec if eps is None else replace(spec, m3_eps=eps, m3_momentum_decay=decay))
    return specs


def label(spec: OptimizerSpec) -> str:
    if spec.name != "m3":
        return spec.name
    return f"m3 eps={spec.m3_eps:g}" + ("" if spec.m3_momentum_decay == 1.0 else f" decay={spec.m3_momentum_decay:g}")


def summarize(runs: list[dict]) -> dict:
    """{model: {optimizer label: {"by_lr": {lr: mean/min/max}, "best_lr", "best_mean", ...}}}"""
    summary = {}
    for run in runs:
        entry = summary.setdefault(run["model"], {}).setdefault(run["optimizer_label"], {"by_lr": {}})
        entry["by_lr"].setdefault(run["optimizer"]["lr"], []).append(run["final_held_out_loss"])
    for by_label in summary.values():
        for entry in by_label.values():
            stats = {}
            for lr, losses in entry["by_lr"].items():
                finite = [x for x in losses if x == x]  # diverged runs are NaN
                stats[lr] = {"losses": losses, "mean": statistics.mean(finite) if len(finite) == len(losses) else float("nan"),
                             "min": min(finite, default=float("nan")), "max": max(finite, default=float("nan")),
                             "std": statistics.stdev(losses) if len(finite) == len(losses) > 1 else None}
            entry["by_lr"] = stats
            finite_lrs = [lr for lr, s in stats.items() if s["mean"] == s["mean"]]
            best = min(finite_lrs, key=lambda lr: stats[lr]["mean"]) if finite_lrs else None
            entry.update(best_lr=best, best_mean=stats[best]["mean"] if best is not None else float("nan"),
                         best_std=stats[best]["std"] if best is not None else None,
                         best_at_edge=best in (min(stats), max(stats)) if best is not None else None)
    return summary


def plot(summary: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, len(summary), figsize=(6 * len(summary), 4), squeeze=False)
    for ax, (model, by_label) in zip(axes[0], summary.items()):
        for name, entry in by_label.items():
            lrs = sorted(entry["by_lr"])
            means = [entry["by_lr"][lr]["mean"] for lr in lrs]
            low = [entry["by_lr"][lr]["min"] for lr in lrs]
            high = [entry["by_lr"][lr]["max"] for lr in lrs]
            line, = ax.plot(lrs, means, marker="o", label=name)
            ax.fill_between(lrs, low, high, color=line.get_color(), alpha=0.2)
        ax.set(xscale="log", xlabel="learning rate (matrices)", ylabel="final held-out loss", title=model)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    shape = replace(ModelShape(), **{k: getattr(args, k) for k in asdict(ModelShape()) if getattr(args, k, None) is not None})
    sizes = matched_models(args.models, shape)
    tokenizer, train_blocks, held_out = prepare_data(args.corpus, shape.vocab_size, shape.block_size)
    specs = optimizer_grid(args)
    output = Path(args.output) if args.output else RESULTS / f"lm_optimizer_sweep_{args.corpus}.json"
    earlier = json.loads(output.read_text()) if args.resume and output.exists() else None
    if earlier is not None and earlier["shape"] != json.loads(json.dumps(asdict(shape))):
        raise SystemExit(f"--resume: {output} was run with the shape {earlier['shape']}, not {asdict(shape)}")
    runs = earlier["runs"] if earlier else []
    # an earlier run's spec through OptimizerSpec: fields added since then take their defaults
    done = {(run["model"], run["seed"], json.dumps(asdict(OptimizerSpec(**run["optimizer"])), sort_keys=True)) for run in runs}
    for seed, model_name, spec in itertools.product(args.seeds, args.models, specs):
        if (model_name, seed, json.dumps(asdict(spec), sort_keys=True)) in done:
            continue
        settings = RunSettings(steps=args.steps, batch_size=args.batch_size, eval_every=args.eval_every,
                               eval_blocks=args.eval_blocks, final_eval_blocks=args.final_eval_blocks,
                               device=args.device, optimizer=spec)
        torch.manual_seed(seed)
        model = build_model(model_name, shape, sizes[model_name]["mlp_size"])
        result = train_one(model, train_blocks, held_out, settings, progress=not args.no_progress,
                           description=f"{model_name} {label(spec)} lr={spec.lr:g} seed {seed}")
        runs.append({"model": model_name, "seed": seed, "optimizer": asdict(spec), "optimizer_label": label(spec), **result})
        print(f"{model_name} {label(spec)} lr={spec.lr:g} seed {seed}: held-out loss {result['final_held_out_loss']:.4f}",
              flush=True)
    summary = summarize(runs)
    for model, by_label in summary.items():
        for name, entry in by_label.items():
            print(f"{model:12} {name:14} best lr {entry['best_lr']}: {entry['best_mean']:.4f} "
                  f"(std {entry['best_std']}){' AT THE EDGE of the grid' if entry['best_at_edge'] else ''}")

    output.parent.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    payload = {
        # with --resume: every invocation's command, joined by " ; ", and their summed duration
        "command": f"{earlier['command']} ; {command}" if earlier else command,
        "duration_s": time.time() - started + (earlier["duration_s"] if earlier else 0.0),
        "load_average_1_5_15min_at_end": os.getloadavg(),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count(), "device": args.device},
        "args": vars(args), "shape": asdict(shape), "parameters": sizes,
        "data": {"training_tokens": train_blocks.numel(), "held_out_tokens": held_out.numel(),
                 "tokens_per_run": args.steps * args.batch_size * shape.block_size,
                 "tokenizer": f"byte-level BPE, vocab {len(tokenizer)}, trained on the training split"},
        "summary": summary, "runs": runs,
    }
    output.write_text(json.dumps(payload, indent=1))
    plot(summary, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png').name}")
    return payload


if __name__ == "__main__":
    main()
