"""Continual learning from scratch: domains learned in sequence (English, then standard-library
code, then Spanish by default) by models matched in non-embedding parameters, with the validation
loss of every domain along the way and the test loss of every domain at the end of each phase.

Each model family first gets its learning rate from a sweep of phase 1 alone (chosen on phase 1's
validation loss); EWC's lambda is chosen on the mean validation loss after the last phase. Then
every model learns the whole sequence, for every seed. At the end of phases 2.., each parameter
group (embeddings, mixers, norms, each CMS level or MLP) is put back, one at a time, to its value
at the end of the previous phase, and the old domains' validation loss is measured: which parts
forget.

    python -m evaluation.continual.run_sequential                                   # priority models
    python -m evaluation.continual.run_sequential --models llama titans_cms2 --seeds 0 --max-phase-steps 50

Writes outputs/continual_sequential.json, _curves.png and _frontier.png (docs/continual.md).
"""

import argparse
import math
from dataclasses import asdict, replace

import torch

from evaluation.lib.cli import add_options
from evaluation.lib.corpora import batch_order, corpus_blocks, train_tokenizer
from evaluation.lib.models import (ModelShape, add_shape_arguments, build_model, matched_mlp_size, non_embedding_parameters,
                                   shape_from_args)
from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.results import ResultsFile, add_output_arguments, command_line, output_path
from evaluation.lib.sweep import grid, summarize
from evaluation.lib.training import held_out_loss
from hope_hf.optim.cms_schedule import CMSSchedule
from hope_hf.training import train_steps, warmup_cosine

NAME = "continual_sequential"
VARIANTS = {  # name: (model family of evaluation.lib.models, CMS periods in optimizer steps, strategy)
    "llama": ("llama", (1,), "plain"),
    "llama_ewc": ("llama", (1,), "ewc"),
    "llama_replay": ("llama", (1,), "replay"),
    "titans_1": ("hope_titans", (1,), "plain"),
    "titans_cms2": ("hope_titans", (1, 8), "plain"),
    "titans_cms3": ("hope_titans", (1, 16, 256), "plain"),
    "attention_1": ("hope_attention", (1,), "plain"),
    "attention_cms2": ("hope_attention", (1, 8), "plain"),
    "attention_cms3": ("hope_attention", (1, 16, 256), "plain"),
}
PRIORITY = ["llama", "titans_1", "titans_cms2"]  # the order when CPU time is short
REPLAY_EVERY = 20  # one training sequence in 20 (5%) comes from the earlier domains


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--order", nargs="+", default=["english", "code", "spanish"])
    parser.add_argument("--models", nargs="+", default=PRIORITY, choices=list(VARIANTS))
    add_options(parser, seeds=[0, 1, 2], sweep_lrs=[1e-3, 3e-3, 1e-2], ewc_lambdas=[10.0, 100.0, 1000.0],
                max_phase_steps=200, batch_size=8, eval_every=25, eval_blocks=8, test_blocks=32, ewc_batches=16,
                threads=1)
    add_shape_arguments(parser)
    parser.add_argument("--freeze-slowest-after", type=int, default=0,
                        help="freeze the slowest CMS level after this phase (0: never)")
    parser.add_argument("--no-progress", action="store_true")
    add_output_arguments(parser, NAME)
    return parser.parse_args(argv)


def model_of(variant: str, shape: ModelShape, seed: int):
    family, periods, _ = VARIANTS[variant]
    shape = replace(shape, cms_periods=periods)
    torch.manual_seed(seed)
    return build_model(family, shape, matched_mlp_size(family, shape))


def parameter_groups(model) -> dict[str, list[str]]:
    """{group: parameter names}: embeddings, mixers, norms, and each MLP / CMS level."""
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        if "embed_tokens" in name or name.startswith("lm_head"):
            group = "embeddings"
        elif "norm" in name:
            group = "norms"
        elif ".cms.levels." in name:
            group = "cms_level_" + name.split(".cms.levels.")[1].split(".")[0]
        elif ".mlp." in name:
            group = "mlp"
        else:
            group = "mixers"
        groups.setdefault(group, []).append(name)
    return groups


class EWC:
    """Elastic weight consolidation: after each phase, the diagonal empirical Fisher of its data
    and the weights then; the penalty lambda/2 * sum F (w - w*)^2 over the phases learned."""

    def __init__(self, strength: float):
        self.strength, self.anchors = strength, []

    def consolidate(self, model, batches) -> None:
        fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        for ids in batches:
            model.zero_grad(set_to_none=True)
            model(ids, labels=ids).loss.backward()
            for n, p in model.named_parameters():
                if p.grad is not None:
                    fisher[n] += p.grad.detach() ** 2 / len(batches)
        model.zero_grad(set_to_none=True)
        self.anchors.append((fisher, {n: p.detach().clone() for n, p in model.named_parameters()}))

    def penalty(self, model) -> torch.Tensor:
        total = 0.0
        for fisher, anchor in self.anchors:
            total = total + sum((fisher[n] * (p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())
        return 0.5 * self.strength * total


def losses(model, blocks, domains, split: str, count: int) -> dict[str, float]:
    return {domain: held_out_loss(model, blocks[domain][split][:count]) for domain in domains}


def forgetting_by_group(model, before: dict, blocks, old_domains, args) -> dict:
    """Old domains' validation loss with one parameter group at a time back at ``before``'s values."""
    params = dict(model.named_parameters())
    found = {}
    for group, names in parameter_groups(model).items():
        now = {n: params[n].detach().clone() for n in names}
        with torch.no_grad():
            for n in names:
                params[n].copy_(before[n])
            found[group] = losses(model, blocks, old_domains, "validation", args.eval_blocks)
            for n in names:
                params[n].copy_(now[n])
    return found


def learn_sequence(variant: str, lr: float, seed: int, blocks, shape, args, phases: int, ewc_strength: float = 0.0):
    """Train ``variant`` on the first ``phases`` domains of --order; one record with every curve."""
    model = model_of(variant, shape, seed)
    strategy = VARIANTS[variant][2]
    ewc = EWC(ewc_strength) if strategy == "ewc" else None
    schedule = CMSSchedule(model) if VARIANTS[variant][0] != "llama" else None
    generator = torch.Generator().manual_seed(seed)
    record = {"non_embedding": non_embedding_parameters(model), "phases": []}
    for phase, domain in enumerate(args.order[:phases]):
        train = blocks[domain]["train"]
        steps = min(args.max_phase_steps, math.ceil(len(train) / args.batch_size))
        order = batch_order(len(train), steps, args.batch_size, data_seed=1000 * phase + seed)
        earlier = [blocks[d]["train"] for d in args.order[:phase]]
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.95),
                                      weight_decay=0.1)

        def backward(step):
            ids = train[order[step - 1]].clone()
            if strategy == "replay" and earlier:
                for row in range(len(ids)):
                    if ((step - 1) * len(ids) + row) % REPLAY_EVERY == 0:
                        source = earlier[int(torch.randint(len(earlier), (1,), generator=generator))]
                        ids[row] = source[int(torch.randint(len(source), (1,), generator=generator))]
            loss = model(ids, labels=ids).loss
            (loss + ewc.penalty(model) if ewc is not None and ewc.anchors else loss).backward()
            return loss.detach()

        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        run = train_steps(model, [optimizer], backward, steps, schedule=schedule,
                          evaluate=lambda: losses(model, blocks, args.order, "validation", args.eval_blocks),
                          eval_every=args.eval_every, lr_factor=lambda s: warmup_cosine(s, steps, max(1, steps // 10)),
                          description=f"{variant} lr {lr:g} seed {seed}: {domain}", progress=not args.no_progress)
        end = {"domain": domain, "steps": steps, "curve": run["evaluations"], "train_loss": run["train_loss"],
               "test": losses(model, blocks, args.order, "test", args.test_blocks),
               "validation": run["evaluations"][-1]}
        if phase > 0:
            end["restored_group"] = forgetting_by_group(model, before, blocks, args.order[:phase], args)
        record["phases"].append(end)
        if ewc is not None:
            ewc.consolidate(model, [train[order[i % steps]] for i in range(args.ewc_batches)])
        if phase + 1 == args.freeze_slowest_after and schedule is not None:
            slowest = max(level.period for level in schedule.levels if level.period is not None)
            for level in schedule.levels:
                if level.period == slowest:
                    for _, p in level.params:
                        p.requires_grad_(False)
    return {**record, **sequence_metrics(record["phases"], args.order[:phases])}


def sequence_metrics(phases: list[dict], domains: list[str]) -> dict:
    """The continual-learning literature's numbers, on test losses: the average over the domains
    seen at each phase's end; each earlier domain's backward transfer (its loss at the end minus
    right after it was learned; > 0 is forgetting); each domain's forward learning (its loss right
    after its phase)."""
    last = phases[-1]["test"]
    backward = {d: last[d] - phases[i]["test"][d] for i, d in enumerate(domains[:-1])}
    return {"average_seen": [sum(p["test"][d] for d in domains[: i + 1]) / (i + 1) for i, p in enumerate(phases)],
            "final_average": sum(last[d] for d in domains) / len(domains),
            "mean_backward_transfer": sum(backward.values()) / len(backward) if backward else 0.0,
            **{f"backward_transfer_{d}": value for d, value in backward.items()},
            **{f"forward_learning_{d}": phases[i]["test"][d] for i, d in enumerate(domains)}}


def plot(runs: list[dict], order: list[str], path) -> None:
    """_curves.png: every domain's validation loss along the whole sequence; _frontier.png: per phase
    from the second, the mean old-domain validation loss against the new domain's."""
    plt = pyplot()
    colors = {v: f"C{i}" for i, v in enumerate(VARIANTS)}
    fig, axes = plt.subplots(1, len(order), figsize=(5 * len(order), 3.8), squeeze=False)
    for ax, domain in zip(axes[0], order):
        for run in runs:
            offset, steps, values = 0, [], []
            for phase in run["phases"]:
                steps += [offset + e["step"] for e in phase["curve"]]
                values += [e[domain] for e in phase["curve"]]
                offset += phase["steps"]
            ax.plot(steps, values, color=colors[run["variant"]], alpha=0.8, label=f"{run['variant']} s{run['seed']}")
        ax.set(xlabel="optimizer steps (phases in --order)", ylabel="validation loss", title=domain)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    save_figure(fig, path.with_name(path.stem + "_curves.png"))
    fig, axes = plt.subplots(1, len(order) - 1, figsize=(5.5 * (len(order) - 1), 4.2), squeeze=False)
    for ax, phase in zip(axes[0], range(1, len(order))):
        for run in runs:
            curve = run["phases"][phase]["curve"]
            old = [sum(e[d] for d in order[:phase]) / phase for e in curve]
            ax.plot([e[order[phase]] for e in curve], old, color=colors[run["variant"]], alpha=0.8,
                    label=f"{run['variant']} s{run['seed']}")
        ax.set(xlabel=f"{order[phase]} validation loss (new)", ylabel=f"mean of {', '.join(order[:phase])} (old)",
               title=f"phase {phase + 1}: {order[phase]}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    save_figure(fig, path.with_name(path.stem + "_frontier.png"))


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = shape_from_args(args)
    tokenizer = train_tokenizer(args.order, shape.vocab_size)
    blocks = {d: corpus_blocks(d, tokenizer, shape.block_size) for d in args.order}
    path = output_path(args, NAME)
    results = ResultsFile(path, command_line(__spec__.name, argv), vars(args), args.resume,
                          varying=("models", "seeds", "threads", "no_progress", "commit_results"))
    results.save(shape=asdict(shape), data={d: {s: b.numel() for s, b in bs.items()} for d, bs in blocks.items()})

    def run(cell, fn):
        return results.run(cell, lambda _: fn())[0]

    families = {VARIANTS[v][:2]: v for v in args.models}  # phase 1 is the same for every strategy of a family
    chosen = dict(results.fields.get("chosen_lr", {}))  # a resumed file keeps its other families' choices
    for (family, periods), variant in families.items():
        sweep = [run({"kind": "lr_sweep", "family": family, "periods": list(periods), "lr": lr, "seed": 0},
                     fn=lambda lr=lr: learn_sequence(variant, lr, 0, blocks, shape, args, phases=1))
                 for lr in args.sweep_lrs]
        best = min(sweep, key=lambda r: r["phases"][0]["validation"][args.order[0]])
        chosen[f"{family} {list(periods)}"] = best["lr"]
    results.save(chosen_lr=chosen)
    lr_of = {v: chosen[f"{VARIANTS[v][0]} {list(VARIANTS[v][1])}"] for v in args.models}
    ewc_lambda = None
    if "llama_ewc" in args.models:
        sweep = [run({"kind": "ewc_sweep", "lambda": lam, "seed": 0}, fn=lambda lam=lam: learn_sequence(
            "llama_ewc", lr_of["llama_ewc"], 0, blocks, shape, args, len(args.order), lam)) for lam in args.ewc_lambdas]
        chosen_run = min(sweep, key=lambda r: sum(r["phases"][-1]["validation"][d] for d in args.order))
        ewc_lambda = chosen_run["lambda"]
        results.save(chosen_ewc_lambda=ewc_lambda)

    def learn(cell):
        if cell["variant"] != "llama_ewc":
            return learn_sequence(cell["variant"], lr_of[cell["variant"]], cell["seed"], blocks, shape, args, len(args.order))
        if cell["seed"] == 0:  # the sweep's run at the chosen lambda is this cell
            return {"ewc_lambda": ewc_lambda, **{k: v for k, v in chosen_run.items() if k not in ("kind", "lambda", "seed")}}
        return {"ewc_lambda": ewc_lambda, **learn_sequence("llama_ewc", lr_of["llama_ewc"], cell["seed"], blocks, shape,
                                                           args, len(args.order), ewc_lambda)}

    for cell in grid(seed=args.seeds, variant=args.models):
        run({"kind": "sequence", **cell, "lr": lr_of[cell["variant"]]}, fn=lambda cell=cell: learn(cell))
    runs = [r for r in results.runs if r["kind"] == "sequence"]
    metrics = ("final_average", "mean_backward_transfer", *(f"backward_transfer_{d}" for d in args.order[:-1]),
               *(f"forward_learning_{d}" for d in args.order))
    results.save(summary=summarize(runs, by=("variant",), metrics=metrics), complete=True)
    plot(runs, args.order, path)
    for row in results.fields["summary"]:
        print(f"{row['variant']:16} final average {row['final_average']['mean']:.3f}, backward transfer "
              f"{row['mean_backward_transfer']['mean']:+.3f}, {args.order[-1]} {row[f'forward_learning_{args.order[-1]}']['mean']:.3f} "
              f"(seeds {row['seeds']})")
    return results.saved


if __name__ == "__main__":
    main()
