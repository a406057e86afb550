"""Continual learning without forgetting? Five ways to continue pretraining a Llama on a new
domain, compared at MATCHED new-domain gain:

  full_finetune    (a) the plain Llama, every weight trained every step (no CMS);
  cms_slow_level0  (b) Llama-CMS, every weight trains, but level 0 (the pretrained MLP) only once
                       every --pretrained-period steps (CMSSchedule, Eq 71: its gradients are
                       summed over the period and applied at once), plus a new fast level;
  cms_frozen       (c) Llama-CMS, every pretrained weight frozen: only a new fast level trains;
  cms_multi        (d) Llama-CMS, pretrained weights frozen, new levels on several periods: a fast
                       one (period 1) and a slow one (period --slow-level-period);
  lora             (e) LoRA (PEFT) on every linear layer of the plain Llama.

Every domain's documents are split into train, validation and test (hope_hf.training.domains,
seeded, no document in two splits). Each strategy trains at every rate of its small learning-rate
sweep (seed --sweep-seed); the rate whose new-domain VALIDATION perplexity ends closest (in log)
to the common target (pretrained validation perplexity / --target-gain) is chosen and run with the
other seeds too. The reported before/after perplexities, gains and old-domain rises are on the
TEST split, its first --test-tokens (8,192) tokens per domain. Validation
perplexity of every domain (the first --eval-blocks blocks) is measured every --eval-every steps
(step 0 included): the curves.

    python -m evaluation.continual.run_forgetting                    # SmolLM2-135M; Spanish new; English, code old
    python -m evaluation.continual.run_forgetting --strategies cms_frozen --seeds 0 --max-steps 10 --lr-sweep 1e-4

Domains: spanish / english (Bible samples shipped in hope_hf/data), code (Python source of the
interpreter's standard library, hope_hf.training.domains), or a .txt file (one document a line).
Writes outputs/continual_forgetting.json (evaluation/results/ with --commit-results; + .png; the
results header, then the JSON after every run, with "complete": false until the end; --resume
skips the runs it has) and, per run, OUTPUT_DIR/STRATEGY/lr_RATE/seed_N/train_log.jsonl. Perplexity
along training is the Accelerate loop's own ``hope_hf.training.evaluate``; before and after,
``hope_hf.training.continual.perplexity`` (the same on full batches, without gradients).
"""

import argparse
import copy
import hashlib
import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import hope_hf  # noqa: F401  (registers llama_cms with the Auto classes)
from evaluation.lib.cli import add_options
from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.results import ResultsFile, add_output_arguments, command_line, output_path
from hope_hf.data import smollm2_gguf_path
from hope_hf.modeling.llama_loading import is_llama_cms_dir, load_plain_llama, load_tokenizer
from hope_hf.modeling.modeling_llama_cms import LlamaCMSForCausalLM
from hope_hf.training import TrainingConfig, train
from hope_hf.training.continual import (
    held_out_curves,
    perplexity,
    retrofit_with_fast_level,
    train_only_new_levels,
)
from hope_hf.training.domains import DOMAINS as NAMED_DOMAINS, TEST_TOKENS, new_and_old_domains

NAME = "continual_forgetting"
STRATEGIES = {
    "full_finetune": "(a) plain Llama, full fine-tune: every weight every step",
    "cms_slow_level0": "(b) Llama-CMS, every weight trains; level 0 (pretrained MLP) once per --pretrained-period "
                       "steps (gradients summed over the period), new fast level and the rest every step",
    "cms_frozen": "(c) Llama-CMS, pretrained weights frozen; only a new fast level (period 1) trains",
    "cms_multi": "(d) Llama-CMS, pretrained weights frozen; new levels on several periods: fast (1) and slow "
                 "(--slow-level-period), each --new-level-size wide",
    "lora": "(e) LoRA (PEFT) of rank --lora-rank on every linear layer of the plain Llama (q, k, v, o, gate, up, down)",
}
LR_SWEEP = {  # per strategy: adapters usually want larger rates than full fine-tuning
    "full_finetune": [5e-5, 1e-4, 2e-4],
    "cms_slow_level0": [5e-5, 1e-4, 2e-4],
    "cms_frozen": [5e-5, 1e-4, 2e-4],
    "cms_multi": [5e-5, 1e-4, 2e-4],
    "lora": [2e-4, 5e-4, 1e-3],
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def strategy_names(text: str) -> str:
    if text not in STRATEGIES:
        raise argparse.ArgumentTypeError(f"unknown strategy {text!r}; allowed: {', '.join(STRATEGIES)}")
    return text


def domain_source(text: str) -> str:
    if text in NAMED_DOMAINS or text.endswith(".txt"):
        return text
    raise argparse.ArgumentTypeError(f"unknown domain {text!r}; allowed: {', '.join(NAMED_DOMAINS)} or a .txt file")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", type=strategy_names, default=list(STRATEGIES),
                        help=f"any of {', '.join(STRATEGIES)} (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="data order per seed (the same for every strategy)")
    parser.add_argument("--sweep-seed", type=int, default=None, help="seed of the learning-rate sweep (default: the first of --seeds)")
    parser.add_argument("--lr-sweep", nargs="+", type=float, default=None,
                        help=f"one sweep for every strategy (default per strategy: {LR_SWEEP})")
    parser.add_argument("--target-gain", type=float, default=2.0,
                        help="matched new-domain gain: the target perplexity is the pretrained one / this")
    parser.add_argument("--model", default=None, help="Llama directory or .gguf (default: SmolLM2-135M-Instruct GGUF)")
    parser.add_argument("--data", type=domain_source, default="spanish", help="new domain (trained on)")
    parser.add_argument("--old-data", nargs="+", type=domain_source, default=["english", "code"],
                        help="old domains (never trained on: they measure forgetting)")
    add_options(parser, max_steps=20, warmup_steps=3, batch_size=2, block_size=128)
    parser.add_argument("--eval-blocks", type=int, default=8,
                        help="validation blocks per domain for the curves and the rate choice (the same every run)")
    parser.add_argument("--test-tokens", type=int, default=TEST_TOKENS,
                        help="test-split tokens per domain that before/after are measured on (the first blocks of the split); fewer is an error")
    parser.add_argument("--eval-every", type=int, default=10, help="validation perplexity of every domain every N steps")
    parser.add_argument("--new-level-size", type=int, default=384, help="hidden size of each new level, (b), (c), (d)")
    parser.add_argument("--pretrained-period", type=int, default=10, help="level 0's period in optimizer steps, (b)")
    parser.add_argument("--slow-level-period", type=int, default=5, help="period of the new slow level, (d)")
    parser.add_argument("--lora-rank", type=int, default=16, help="(e); lora_alpha = 2 x rank")
    parser.add_argument("--split-seed", type=int, default=0, help="train/validation/test document split (fixed across seeds)")
    parser.add_argument("--output-dir", default="outputs/continual_forgetting", help="per-run training logs")
    add_output_arguments(parser, NAME)
    args = parser.parse_args(argv)
    for name in ("max_steps", "batch_size", "block_size", "new_level_size", "pretrained_period", "slow_level_period",
                 "eval_blocks", "test_tokens", "eval_every", "lora_rank"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    if args.target_gain <= 0:
        parser.error(f"--target-gain must be > 0, got {args.target_gain}")
    if args.lr_sweep is not None and any(lr <= 0 for lr in args.lr_sweep):
        parser.error(f"--lr-sweep rates must be > 0, got {args.lr_sweep}")
    if args.data in args.old_data:
        parser.error(f"the new domain {args.data!r} cannot also be an old domain")
    args.strategies = list(dict.fromkeys(args.strategies))
    args.sweep_seed = args.seeds[0] if args.sweep_seed is None else args.sweep_seed
    return args


def load_splits(args, tokenizer):
    """(new-domain training blocks, {domain: first --eval-blocks validation blocks}, {domain: its first
    --test-tokens test blocks}), the new domain first."""
    return new_and_old_domains([args.data, *args.old_data], tokenizer, args.block_size, args.eval_blocks,
                               args.test_tokens, seed=args.split_seed)


def new_levels(strategy: str, args) -> list[dict]:
    fast = {"name": "fast", "intermediate_size": args.new_level_size, "update_period": 1}
    if strategy == "cms_multi":
        return [fast, {"name": "slow", "intermediate_size": args.new_level_size, "update_period": args.slow_level_period}]
    return [fast]


def build_model(strategy: str, llama, args):
    """The model a strategy trains, from a pretrained LlamaForCausalLM (left untouched)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    if strategy == "full_finetune":
        return copy.deepcopy(llama).requires_grad_(True)
    if strategy == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.0,
                            target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
        return get_peft_model(copy.deepcopy(llama), config)  # only the adapters train; B starts at zero
    if strategy == "cms_slow_level0":
        model = retrofit_with_fast_level(llama, args.new_level_size, args.pretrained_period)
        return model.requires_grad_(True)
    model = LlamaCMSForCausalLM.from_llama(llama, cms_levels=new_levels(strategy, args),
                                           pretrained_update_period=args.pretrained_period, warm_start=True)
    train_only_new_levels(model)
    return model


def cms_periods(strategy: str, args):
    """CMSSchedule periods by level index (None: the config's, or no CMS)."""
    return {0: args.pretrained_period, 1: 1} if strategy == "cms_slow_level0" else None


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


def measure(model, blocks: dict, args) -> dict:
    """Perplexity per domain over every block given (no gradients; a short last batch weighs by
    its blocks): on full batches, what the training loop's evaluate gives for the curves."""
    return {name: perplexity(model, b, math.ceil(len(b) / args.batch_size), args.batch_size) for name, b in blocks.items()}


def run_one(strategy: str, lr: float, seed: int, llama, tokenizer, train_blocks, validation: dict, test: dict, args,
            before: dict, validation_before: dict):
    """Train one strategy at one rate with one seed; returns (record, trained model). ``before`` /
    ``validation_before``: test / validation perplexity of the pretrained Llama, which every
    strategy starts from (new CMS levels' and LoRA's outputs start at zero)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(strategy, llama, args)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    run_dir = Path(args.output_dir) / strategy / f"lr_{lr:g}" / f"seed_{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    new_domain, *old_domains = test
    config = TrainingConfig(
        output_dir=str(run_dir), max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=lr,
        warmup_steps=args.warmup_steps, cms_periods=cms_periods(strategy, args), eval_every=args.eval_every,
        eval_batches=math.ceil(args.eval_blocks / args.batch_size), save_every=0, seed=seed,
        document_boundaries=False,  # blocks as one text, as the committed results were made (and `measure` reads them)
    )
    data = RecordingDataset(train_blocks)
    train_start, train_cpu = time.perf_counter(), time.process_time()
    state = train(model, data, validation[new_domain], config, tokenizer,
                  other_eval_datasets={name: validation[name] for name in old_domains})
    train_seconds, train_cpu = time.perf_counter() - train_start, time.process_time() - train_cpu
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    shutil.rmtree(run_dir / "final", ignore_errors=True)
    curves = held_out_curves(state.history, new_domain, validation_before)
    validation_after = {name: curve[-1][1] for name, curve in curves.items()}
    after = measure(model, test, args)
    order = data.read[: args.max_steps * args.batch_size]  # the loader may have read one batch ahead
    losses = [[r["step"], r["loss"]] for r in state.history if "loss" in r]
    record = {
        "strategy": strategy, "learning_rate": lr, "seed": seed,
        "before": before, "after": after, "validation_before": validation_before, "validation_after": validation_after,
        "curves": curves, "training_loss": losses,
        "new_domain_gain": before[new_domain] / after[new_domain],
        "old_domain_rise": {name: after[name] / before[name] - 1 for name in old_domains},
        "trainable_parameters": trainable, "total_parameters": sum(p.numel() for p in model.parameters()),
        "steps": state.step, "tokens": len(order) * args.block_size,
        "data_order_sha256": hashlib.sha256(json.dumps(order).encode()).hexdigest()[:16],
        "train_wall_s": round(train_seconds, 1),
        "train_cpu_s": round(train_cpu, 1),  # CPU time of this process (all its threads): less load-dependent
        "wall_s": round(time.perf_counter() - start, 1),
        "log": str(run_dir / "train_log.jsonl"),
    }
    return record, model


def log_distance(record: dict, new_domain: str, target: float) -> float:
    return abs(math.log(record["validation_after"][new_domain] / target))


def choose_rates(runs: list[dict], new_domain: str, target: float, sweep_seed: int) -> dict:
    """Per strategy, the swept rate whose new-domain validation perplexity is closest (in log) to
    the target (the test split plays no part in the choice)."""
    chosen = {}
    for strategy in dict.fromkeys(r["strategy"] for r in runs):
        swept = [r for r in runs if r["strategy"] == strategy and r["seed"] == sweep_seed]
        chosen[strategy] = min(swept, key=lambda r: log_distance(r, new_domain, target))["learning_rate"]
    return chosen


def summarize(runs: list[dict], chosen: dict, new_domain: str, target: float) -> dict:
    """Per strategy at its chosen rate, mean and std over seeds."""
    stats = lambda values: {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    summary = {}
    for strategy, lr in chosen.items():
        rs = [r for r in runs if r["strategy"] == strategy and r["learning_rate"] == lr]
        domains = list(rs[0]["after"])
        summary[strategy] = {
            "learning_rate": lr, "seeds": [r["seed"] for r in rs],
            "ppl_before": rs[0]["before"],
            "ppl_after": {d: stats([r["after"][d] for r in rs]) for d in domains},
            "new_domain_gain": stats([r["new_domain_gain"] for r in rs]),
            "new_domain_off_target": stats([r["validation_after"][new_domain] / target - 1 for r in rs]),
            "old_domain_rise": {d: stats([r["old_domain_rise"][d] for r in rs]) for d in rs[0]["old_domain_rise"]},
            "trainable_parameters": rs[0]["trainable_parameters"],
            "train_wall_s": stats([r["train_wall_s"] for r in rs]),
        }
    if "full_finetune" in summary:  # each old domain's rise relative to full fine-tuning's (the goal: <= 0.5)
        reference = summary["full_finetune"]["old_domain_rise"]
        for s in summary.values():
            s["rise_vs_full_finetune"] = {d: (s["old_domain_rise"][d]["mean"] / reference[d]["mean"]
                                              if reference[d]["mean"] > 0 else None) for d in reference}
    return summary


COLORS = dict(zip(STRATEGIES, ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange")))


def plot(results: dict, png: Path) -> None:
    runs, chosen, s = results["runs"], results["chosen_learning_rates"], results["settings"]
    domains = list(runs[0]["after"])
    new_domain, old_domains = domains[0], domains[1:]
    fig, axes = pyplot().subplots(1, len(domains) + 1, figsize=(4.4 * (len(domains) + 1), 4.2))
    for ax, domain in zip(axes, domains):
        for r in runs:
            if chosen.get(r["strategy"]) != r["learning_rate"]:
                continue
            steps, values = zip(*r["curves"][domain])
            ax.plot(steps, values, marker="o", ms=3, color=COLORS[r["strategy"]], alpha=0.85,
                    ls="-" if r["seed"] == s["sweep_seed"] else "--",
                    label=f"{r['strategy']} lr {r['learning_rate']:g}" if r["seed"] == s["sweep_seed"] else None)
        if domain == new_domain:
            ax.axhline(results["target_perplexity"], color="black", lw=0.8, ls=":", label="target")
        ax.set_title(f"{domain} ({'new, trained on' if domain == new_domain else 'old, never trained on'})", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation perplexity")
    axes[0].legend(fontsize=7)
    trade = axes[-1]
    for strategy in chosen:
        rs = sorted((r for r in runs if r["strategy"] == strategy and r["seed"] == s["sweep_seed"]),
                    key=lambda r: r["learning_rate"])
        xs = [r["validation_after"][new_domain] for r in rs]
        ys = [100 * statistics.fmean(r["old_domain_rise"].values()) for r in rs]
        trade.plot(xs, ys, "o-", color=COLORS[strategy], label=strategy)
        for r, x, y in zip(rs, xs, ys):
            trade.annotate(f"{r['learning_rate']:g}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    trade.axvline(results["target_perplexity"], color="black", lw=0.8, ls=":")
    trade.axhline(0, color="gray", lw=0.6)
    trade.set_xscale("log")
    trade.set_xlabel(f"{new_domain} validation perplexity after (<- learned more)")
    trade.set_ylabel(f"mean old-domain test-split rise, % ({', '.join(old_domains)})")
    trade.set_title(f"learning-rate sweep, seed {s['sweep_seed']} (labels: rate)", fontsize=9)
    trade.legend(fontsize=7)
    fig.suptitle(f"{Path(s['model']).name}: {s['max_steps']} steps x {s['batch_size']}x{s['block_size']} tokens of "
                 f"{new_domain}; curves at each strategy's chosen rate (solid seed {s['sweep_seed']}, dashed others); "
                 f"target {new_domain} perplexity {results['target_perplexity']:.1f}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, png, dpi=110, bbox_inches=None)


def main(argv=None, on_trained=None) -> dict:
    """Run the study; ``on_trained(record, model, validation, test)`` (optional) sees each trained
    model before it is dropped."""
    args = parse_args(argv)
    source = Path(args.model) if args.model else smollm2_gguf_path()
    if is_llama_cms_dir(source):
        raise ValueError(f"{str(source)!r} is already a Llama-CMS; --model needs a plain Llama (directory or .gguf)")
    start, start_cpu, load_at_start = time.perf_counter(), time.process_time(), os.getloadavg()
    llama = load_plain_llama(source)
    llama.requires_grad_(False)  # the shared source; every strategy trains a copy
    tokenizer = load_tokenizer(source)
    new_train, validation, test = load_splits(args, tokenizer)
    new_domain = next(iter(test))
    test_tokens = {name: len(blocks) * args.block_size for name, blocks in test.items()}
    tqdm.write(f"{source.name}: {len(new_train)} {new_domain} training blocks of {args.block_size} tokens; "
               f"{args.eval_blocks} validation blocks per domain (curves, rate choice); test split (reported): "
               + ", ".join(f"{n} {t:,} tokens" for n, t in test_tokens.items())
               + f"; loaded in {time.perf_counter() - start:.0f} s")
    before, validation_before = measure(llama, test, args), measure(llama, validation, args)
    target = validation_before[new_domain] / args.target_gain
    tqdm.write(f"pretrained model, test-split perplexity: {before}; validation: {validation_before}; "
               f"target {new_domain} validation perplexity {target:.2f}")

    sweeps = {strategy: args.lr_sweep or LR_SWEEP[strategy] for strategy in args.strategies}
    settings = {
        # the shipped GGUF by name: its absolute path differs between virtual environments
        "model": source.name if source == smollm2_gguf_path() else str(source),
        "new_domain": args.data, "old_domains": args.old_data, "max_steps": args.max_steps,
        "batch_size": args.batch_size, "block_size": args.block_size, "learning_rate_sweeps": sweeps,
        "optimizer": "AdamW, weight decay 0.01, linear warmup + cosine decay to 0, gradient clip 1.0",
        "warmup_steps": args.warmup_steps, "new_level_size": args.new_level_size,
        "pretrained_period": args.pretrained_period, "slow_level_period": args.slow_level_period,
        "lora_rank": args.lora_rank, "lora_alpha": 2 * args.lora_rank, "lora_targets": LORA_TARGETS,
        "eval_blocks_per_domain": args.eval_blocks, "test_tokens": args.test_tokens,
        "test_tokens_per_domain": test_tokens, "eval_every": args.eval_every,
        "split_seed": args.split_seed, "seeds": args.seeds, "sweep_seed": args.sweep_seed,
        "target_gain": args.target_gain, "training_blocks": len(new_train), "threads": torch.get_num_threads(),
    }
    results = ResultsFile(output_path(args, NAME), command_line("evaluation.continual.run_forgetting", argv), settings,
                          resume=args.resume, varying=("threads", "seeds", "learning_rate_sweeps"))
    results.save(
        complete=False,
        strategies={name: STRATEGIES[name] for name in args.strategies},
        target_perplexity=target,
        before=before,
        validation_before=validation_before,
        measured_on={"before_after_gain_rise": "test split, its first --test-tokens tokens", "test_tokens": test_tokens,
                     "rate_choice_and_curves": f"validation split, the first {args.eval_blocks} blocks of every domain "
                                               f"({args.eval_blocks * args.block_size:,} tokens)"},
        definitions={
            "target_perplexity": "pretrained new-domain validation perplexity / target_gain: every strategy's rate is "
                                 "chosen so that its new-domain validation perplexity after training is closest to it "
                                 "(in log)",
            "before, after": "test-split perplexity per domain, on its first --test-tokens tokens (test_tokens in measured_on)",
            "new_domain_gain": "new-domain test-split ppl before / after (> 1 = learned the new domain)",
            "old_domain_rise": "old-domain test-split ppl after / before - 1 (0 = no forgetting)",
            "new_domain_off_target": "new-domain validation ppl after / target_perplexity - 1",
            "rise_vs_full_finetune": "a strategy's mean old-domain rise / full fine-tuning's, both at the matched gain",
            "curves": "validation perplexity per domain, [[step, ppl], ...], step 0 = the pretrained model",
            "data_order_sha256": "hash of the training blocks in the order read: equal across strategies for one seed",
        },
    )

    def run_and_record(strategy, lr, seed):
        if results.has({"strategy": strategy, "learning_rate": lr, "seed": seed}):
            return  # --resume: already run
        record, model = run_one(strategy, lr, seed, llama, tokenizer, new_train, validation, test, args, before,
                                validation_before)
        if on_trained is not None:
            on_trained(record, model, validation, test)
        results.fields["total_wall_s"] = round(time.perf_counter() - start, 1)
        results.add(record)  # partial results survive a kill
        rises = ", ".join(f"{d} {100 * v:+.1f}%" for d, v in record["old_domain_rise"].items())
        tqdm.write(f"{strategy} lr {lr:g} seed {seed}: {new_domain} {before[new_domain]:.2f} -> "
                   f"{record['after'][new_domain]:.2f} (x{record['new_domain_gain']:.2f}); {rises}; "
                   f"{record['train_wall_s']:.0f} s")

    for strategy in args.strategies:  # the sweep, one seed
        for lr in sweeps[strategy]:
            run_and_record(strategy, lr, args.sweep_seed)
    chosen = choose_rates(results.runs, new_domain, target, args.sweep_seed)
    results.save(chosen_learning_rates=chosen)
    for seed in args.seeds:  # the chosen rates, the other seeds
        for strategy in args.strategies:
            if seed != args.sweep_seed:
                run_and_record(strategy, chosen[strategy], seed)

    path = results.save(summary=summarize(results.runs, chosen, new_domain, target), complete=True,
                        total_wall_s=round(time.perf_counter() - start, 1),
                        total_cpu_s=round(time.process_time() - start_cpu, 1), load_average_at_start=load_at_start)
    saved = json.loads(path.read_text())
    plot(saved, path.with_suffix(".png"))
    print_table(saved)
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return saved


def print_table(results: dict) -> None:
    domains = list(results["before"])
    new_domain, old_domains = domains[0], domains[1:]
    tokens = results["settings"].get("test_tokens_per_domain")
    print(f"\ntarget {new_domain} validation perplexity {results['target_perplexity']:.2f} (pretrained "
          f"{results.get('validation_before', results['before'])[new_domain]:.2f} / {results['settings']['target_gain']:g}); "
          + ("after and rises: test split, " + ", ".join(f"{d} {t:,} tokens" for d, t in tokens.items())
             if tokens else "after and rises: held-out blocks"))
    print(f"{'strategy':<16} {'lr':>7} {'trainable':>11} {new_domain + ' after':>14} "
          + " ".join(f"{d + ' rise':>14}" for d in old_domains) + "   rise / full FT")
    for name, s in results["summary"].items():
        rises = " ".join(f"{100 * s['old_domain_rise'][d]['mean']:>+9.1f}±{100 * s['old_domain_rise'][d]['std']:<4.1f}"
                         for d in old_domains)
        versus = s.get("rise_vs_full_finetune", {})
        print(f"{name:<16} {s['learning_rate']:>7g} {s['trainable_parameters']:>11,} "
              f"{s['ppl_after'][new_domain]['mean']:>8.2f}±{s['ppl_after'][new_domain]['std']:<5.2f} {rises}   "
              + " ".join(f"{d} {v:.2f}" if v is not None else f"{d} -" for d, v in versus.items()))


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    main()
