"""Continual learning without forgetting? Three ways to continue pretraining a Llama on a new
domain, with the same data, tokens, steps and learning rate:

  full_finetune    (a) the plain Llama, every weight trained every step (no CMS);
  cms_slow_level0  (b) Llama-CMS, every weight trained, but level 0 (the pretrained MLP) only
                       once every --pretrained-period steps (CMSSchedule, Eq 71: its gradients
                       are summed over the period and applied at once), plus a new fast level;
  cms_frozen       (c) Llama-CMS with every pretrained weight frozen: only the new fast level
                       trains (what scripts/continual_pretrain.py does by default).

Held-out perplexity on the new domain (default: Spanish, Reina-Valera 1909) and on the old one
(English, World English Bible: never trained on, it measures forgetting), before and after.

    python evaluation/continual/run_forgetting.py                       # SmolLM2-135M, all three, 2 seeds
    python evaluation/continual/run_forgetting.py --strategies cms_frozen --seeds 0 --max-steps 10

Writes evaluation/results/continual_forgetting.json (+ .png) and, per run,
OUTPUT_DIR/STRATEGY/seed_N/{train_log.jsonl,loss_curve.png}.
"""

import argparse
import copy
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import hope_hf  # noqa: F401  (registers llama_cms with the Auto classes)
from hope_hf.data import sample_text_path, smollm2_gguf_path
from hope_hf.training import TrainingConfig, build_datasets, train
from hope_hf.training.continual import (
    is_llama_cms_dir,
    load_plain_llama,
    load_tokenizer,
    new_level_parameter_ids,
    perplexity,
    retrofit_with_fast_level,
    train_only_new_levels,
)

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "evaluation" / "results" / "continual_forgetting.json"
STRATEGIES = {
    "full_finetune": "(a) plain Llama, full fine-tune: every weight every step",
    "cms_slow_level0": "(b) Llama-CMS, every weight trains; level 0 (pretrained MLP) once per --pretrained-period "
                       "steps (gradients summed over the period), new fast level and the rest every step",
    "cms_frozen": "(c) Llama-CMS, pretrained weights frozen; only the new fast level trains (continual_pretrain.py default)",
}
DOMAINS = ("new domain", "old domain")


def strategy_names(text: str) -> str:
    if text not in STRATEGIES:
        raise argparse.ArgumentTypeError(f"unknown strategy {text!r}; allowed: {', '.join(STRATEGIES)}")
    return text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", type=strategy_names, default=list(STRATEGIES),
                        help=f"any of {', '.join(STRATEGIES)} (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="data order per seed (the same for every strategy)")
    parser.add_argument("--model", default=None, help="Llama directory or .gguf (default: SmolLM2-135M-Instruct GGUF)")
    parser.add_argument("--data", nargs="+", default=[str(sample_text_path("rv1909_es_sample"))], help="new domain")
    parser.add_argument("--old-data", nargs="+", default=[str(sample_text_path("web_en_sample"))], help="old domain (forgetting)")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="one rate for every strategy")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--new-level-size", type=int, default=384, help="hidden size of the new fast level, (b) and (c)")
    parser.add_argument("--pretrained-period", type=int, default=10, help="level 0's period in optimizer steps, (b)")
    parser.add_argument("--eval-batches", type=int, default=8, help="held-out batches per domain for each perplexity")
    parser.add_argument("--split-seed", type=int, default=0, help="train/held-out document split (fixed across seeds)")
    parser.add_argument("--output-dir", default="outputs/continual_forgetting", help="per-run training logs")
    parser.add_argument("--results", default=str(RESULTS), help="JSON path; the PNG goes beside it")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoint and final model")
    args = parser.parse_args(argv)
    for name in ("max_steps", "batch_size", "block_size", "new_level_size", "pretrained_period", "eval_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    args.strategies = list(dict.fromkeys(args.strategies))
    return args


def build_model(strategy: str, llama, new_level_size: int, pretrained_period: int):
    """The model a strategy trains, from a pretrained LlamaForCausalLM (left untouched)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    if strategy == "full_finetune":
        model = copy.deepcopy(llama)
        model.requires_grad_(True)
        return model
    model = retrofit_with_fast_level(llama, new_level_size, pretrained_period)
    if strategy == "cms_slow_level0":
        model.requires_grad_(True)
    else:  # cms_frozen
        train_only_new_levels(model)
    return model


def cms_periods(strategy: str, pretrained_period: int):
    """CMSSchedule periods by level index: level 0 slow in (b); (a) has no CMS, (c) trains level 1 only."""
    return {0: pretrained_period, 1: 1} if strategy == "cms_slow_level0" else None


class RecordingDataset(torch.utils.data.Dataset):
    """The training blocks, remembering which were read in which order (to show every strategy
    saw the same tokens)."""

    def __init__(self, blocks):
        self.blocks, self.read = blocks, []

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        self.read.append(int(i))
        return self.blocks[i]


def measure(model, held_out: dict, args) -> dict:
    return {name: perplexity(model, blocks, args.eval_batches, args.batch_size) for name, blocks in held_out.items()}


def run_one(strategy: str, seed: int, llama, tokenizer, train_blocks, held_out: dict, args, before: dict):
    """Train one strategy with one seed; returns (record, trained model). ``before``: held-out
    perplexity of the pretrained Llama, which every strategy starts from (the CMS retrofit computes
    what the Llama computed: new levels' outputs start at zero)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(strategy, llama, args.new_level_size, args.pretrained_period)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    run_dir = Path(args.output_dir) / strategy / f"seed_{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config = TrainingConfig(
        output_dir=str(run_dir), max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps, cms_periods=cms_periods(strategy, args.pretrained_period), eval_every=0,
        eval_batches=args.eval_batches, save_every=0, seed=seed,
    )
    data = RecordingDataset(train_blocks)
    train_start, train_cpu = time.perf_counter(), time.process_time()
    state = train(model, data, held_out["new domain"], config, tokenizer)
    train_seconds, train_cpu = time.perf_counter() - train_start, time.process_time() - train_cpu
    # the loop's final evaluation is the new domain's held-out perplexity (same blocks, same batches)
    after = {"new domain": [r["eval_perplexity"] for r in state.history if "eval_perplexity" in r][-1],
             "old domain": perplexity(model, held_out["old domain"], args.eval_batches, args.batch_size)}
    if not args.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        shutil.rmtree(run_dir / "final", ignore_errors=True)
    order = data.read[: args.max_steps * args.batch_size]  # the loader may have read one batch ahead
    losses = [r["loss"] for r in state.history if "loss" in r]
    record = {
        "strategy": strategy,
        "seed": seed,
        "before": before,
        "after": after,
        "forgetting_ratio": after["old domain"] / before["old domain"],
        "new_domain_gain": before["new domain"] / after["new domain"],
        "trainable_parameters": trainable,
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "level0_period": args.pretrained_period if strategy == "cms_slow_level0" else (1 if strategy == "full_finetune" else None),
        "steps": state.step,
        "tokens": len(order) * args.block_size,
        "data_order_sha256": hashlib.sha256(json.dumps(order).encode()).hexdigest()[:16],
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "train_wall_s": round(train_seconds, 1),
        "train_cpu_s": round(train_cpu, 1),  # CPU time of this process (all its threads): less load-dependent
        "wall_s": round(time.perf_counter() - start, 1),
        "log": str(run_dir / "train_log.jsonl"),
    }
    return record, model


def summarize(runs: list[dict]) -> dict:
    summary = {}
    for strategy in dict.fromkeys(r["strategy"] for r in runs):
        rs = [r for r in runs if r["strategy"] == strategy]
        stats = lambda values: {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        summary[strategy] = {
            "seeds": [r["seed"] for r in rs],
            "ppl_before": {d: rs[0]["before"][d] for d in DOMAINS},
            "ppl_after": {d: stats([r["after"][d] for r in rs]) for d in DOMAINS},
            "forgetting_ratio": stats([r["forgetting_ratio"] for r in rs]),
            "new_domain_gain": stats([r["new_domain_gain"] for r in rs]),
            "trainable_parameters": rs[0]["trainable_parameters"],
            "train_wall_s": stats([r["train_wall_s"] for r in rs]),
        }
    return summary


def plot(results: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, runs = results["summary"], results["runs"]
    names = list(summary)
    colors = dict(zip(STRATEGIES, ("tab:red", "tab:blue", "tab:green")))
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.38
    for k, domain in enumerate(DOMAINS):
        xs = [i + (k - 0.5) * width for i in range(len(names))]
        means = [summary[n]["ppl_after"][domain]["mean"] for n in names]
        stds = [summary[n]["ppl_after"][domain]["std"] for n in names]
        bars.bar(xs, means, width, yerr=stds, capsize=3, color=[colors[n] for n in names], alpha=0.45 if k else 0.9,
                 hatch="//" if k else None, edgecolor="black", label=f"{domain} ({'Spanish' if k == 0 else 'English'})")
        for x, n in zip(xs, names):
            bars.hlines(summary[n]["ppl_before"][domain], x - width / 2, x + width / 2, colors="black", linestyles="dashed")
    bars.set_xticks(range(len(names)), names)
    bars.set_ylabel("held-out perplexity after training")
    bars.set_title("after (bars, mean ± std over seeds); before (dashed)", fontsize=9)
    bars.legend(fontsize=8)
    for n in names:
        rs = [r for r in runs if r["strategy"] == n]
        scatter.scatter([r["new_domain_gain"] for r in rs], [r["forgetting_ratio"] for r in rs], color=colors[n], label=n, s=40)
    scatter.axhline(1.0, color="gray", lw=0.8, ls=":")
    scatter.set_xlabel("new-domain gain (ppl before / after)  ->  better")
    scatter.set_ylabel("forgetting (old-domain ppl after / before)  ->  worse")
    scatter.set_title("one point per seed", fontsize=9)
    scatter.legend(fontsize=8)
    s = results["settings"]
    fig.suptitle(f"{Path(s['model']).name}: {s['max_steps']} steps x {s['batch_size']}x{s['block_size']} tokens "
                 f"on the new domain, lr {s['learning_rate']:g}", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv=None, on_trained=None) -> dict:
    """Run the study; ``on_trained(record, model, held_out)`` (optional) sees each trained model
    before it is dropped."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    source = Path(args.model) if args.model else smollm2_gguf_path()
    if is_llama_cms_dir(source):
        raise ValueError(f"{str(source)!r} is already a Llama-CMS; --model needs a plain Llama (directory or .gguf)")
    start, start_cpu, load_at_start = time.perf_counter(), time.process_time(), os.getloadavg()
    llama = load_plain_llama(source)
    llama.requires_grad_(False)  # the shared source; every strategy trains a copy
    tokenizer = load_tokenizer(source)
    limit = llama.config.max_position_embeddings
    new_train, new_held_out = build_datasets(args.data, tokenizer, args.block_size, seed=args.split_seed, max_model_length=limit)
    _, old_held_out = build_datasets(args.old_data, tokenizer, args.block_size, seed=args.split_seed, max_model_length=limit)
    held_out = {"new domain": new_held_out, "old domain": old_held_out}
    eval_tokens = {d: min(len(b), args.eval_batches * args.batch_size) * args.block_size for d, b in held_out.items()}
    tqdm.write(f"{source.name}: {len(new_train)} training blocks of {args.block_size} tokens; "
               f"held-out tokens per perplexity {eval_tokens}; loaded in {time.perf_counter() - start:.0f} s")

    before = measure(llama, held_out, args)
    tqdm.write(f"pretrained model, held-out perplexity: {before}")
    runs = []
    jobs = [(seed, strategy) for seed in args.seeds for strategy in args.strategies]
    for seed, strategy in tqdm(jobs, desc="runs"):
        record, model = run_one(strategy, seed, llama, tokenizer, new_train, held_out, args, before)
        if on_trained is not None:
            on_trained(record, model, held_out)
        del model
        runs.append(record)
        tqdm.write(f"{strategy} seed {seed}: new {record['before']['new domain']:.2f} -> {record['after']['new domain']:.2f}, "
                   f"old {record['before']['old domain']:.2f} -> {record['after']['old domain']:.2f} "
                   f"(forgetting x{record['forgetting_ratio']:.2f}), {record['train_wall_s']:.0f} s")

    script = Path(__file__).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    results = {
        "command": shlex.join(["python", str(shown), *argv]),
        "strategies": {name: STRATEGIES[name] for name in args.strategies},
        "settings": {
            "model": str(source), "data": args.data, "old_data": args.old_data, "max_steps": args.max_steps,
            "batch_size": args.batch_size, "block_size": args.block_size, "learning_rate": args.learning_rate,
            "learning_rate_note": "one rate for every strategy (AdamW, weight decay 0.01, warmup + cosine, clip 1.0)",
            "warmup_steps": args.warmup_steps, "new_level_size": args.new_level_size,
            "pretrained_period": args.pretrained_period, "eval_batches": args.eval_batches,
            "held_out_tokens_per_perplexity": eval_tokens, "split_seed": args.split_seed, "seeds": args.seeds,
            "training_blocks": len(new_train),
        },
        "definitions": {
            "forgetting_ratio": "old-domain held-out ppl after / before (1 = no forgetting)",
            "new_domain_gain": "new-domain held-out ppl before / after (> 1 = learned the new domain)",
            "before": "the pretrained Llama's held-out perplexity, the start of every strategy (the CMS retrofit computes "
                      "what the Llama computed: new levels' outputs start at zero)",
            "data_order_sha256": "hash of the training blocks in the order read: equal across strategies for one seed",
        },
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count(), "loadavg_1_5_15min_at_start": load_at_start,
                    "loadavg_1_5_15min_at_end": os.getloadavg(),
                    "note": "load average well above cpu_count: other jobs shared the cores, wall times are inflated"},
        "total_wall_s": round(time.perf_counter() - start, 1),
        "total_cpu_s": round(time.process_time() - start_cpu, 1),
        "summary": summarize(runs),
        "runs": runs,
    }
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    plot(results, path.with_suffix(".png"))
    print_table(results)
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return results


def print_table(results: dict) -> None:
    print("\nstrategy           trainable   new ppl before -> after   old ppl before -> after   forgetting   new gain")
    for name, s in results["summary"].items():
        pa, pb = s["ppl_after"], s["ppl_before"]
        print(f"{name:<18}{s['trainable_parameters']:>11,}   {pb['new domain']:>7.2f} -> {pa['new domain']['mean']:>6.2f}"
              f"±{pa['new domain']['std']:<5.2f}    {pb['old domain']:>7.2f} -> {pa['old domain']['mean']:>6.2f}"
              f"±{pa['old domain']['std']:<5.2f}   x{s['forgetting_ratio']['mean']:.2f}        x{s['new_domain_gain']['mean']:.2f}")


if __name__ == "__main__":
    main()
