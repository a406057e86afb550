"""Training one language model of an experiment: optimizers by name, one run on a fixed block
order with the validation loss along the way and the validation and test losses at the end, on
``hope_hf.training.train_steps``."""

import math
from dataclasses import dataclass, field

import torch

from hope_hf import M3
from hope_hf.training import train_steps, warmup_cosine

from .corpora import batch_order


def hidden_matrices(model) -> tuple[list, list]:
    """(2-D hidden weights, everything else: embeddings, LM head, norms, biases, convolutions)."""
    skip = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) for p in m.parameters()}
    matrices, others = [], []
    for p in model.parameters():
        (matrices if p.dim() == 2 and id(p) not in skip else others).append(p)
    return matrices, others


@dataclass
class OptimizerSpec:
    name: str = "adamw"  # adamw | muon | m3
    lr: float = 3e-3  # AdamW's lr, or the matrix lr of muon / m3
    adamw_lr: float = 3e-3  # the AdamW part of muon / m3 (embeddings, head, 1-D, conv)
    weight_decay: float = 0.1
    # m3_*: Algorithm 1's values, not M3()'s defaults (stored sweep runs rebuild from these fields)
    m3_eps: float = 1e-2
    m3_momentum_decay: float = 1.0  # mu of both M3 momenta; 1.0 is Algorithm 1 (momenta sum every gradient)
    m3_variance: str = "sum"  # M3's second moment: "sum" (Algorithm 1), "ema" (Adam's moving average) or "none"
    betas: tuple = (0.9, 0.95)  # of AdamW (and of the AdamW part of muon / m3)


def decay_groups(params, weight_decay: float, **options) -> list[dict]:
    """Parameter groups: those marked ``_no_weight_decay`` (fla's marking, e.g. a Gated DeltaNet's
    A_log and dt_bias) get none, the rest ``weight_decay``; empty groups are left out."""
    params = list(params)
    exempt = [p for p in params if getattr(p, "_no_weight_decay", False)]
    decayed = [p for p in params if not getattr(p, "_no_weight_decay", False)]
    groups = [{"params": decayed, "weight_decay": weight_decay, **options}, {"params": exempt, "weight_decay": 0.0, **options}]
    return [g for g in groups if g["params"]]


def make_optimizers(model, spec: OptimizerSpec) -> list[torch.optim.Optimizer]:
    if spec.name == "adamw":
        return [torch.optim.AdamW(decay_groups(model.parameters(), spec.weight_decay), lr=spec.lr, betas=tuple(spec.betas))]
    matrices, others = hidden_matrices(model)
    if spec.name == "muon":
        return [torch.optim.Muon(matrices, lr=spec.lr, weight_decay=spec.weight_decay),
                torch.optim.AdamW(decay_groups(others, spec.weight_decay), lr=spec.adamw_lr, betas=tuple(spec.betas))]
    if spec.name == "m3":
        levels = [{"period": 1, "beta": 0.9, "weight": 1.0, "decay": spec.m3_momentum_decay},  # Algorithm 1's defaults
                  {"period": 8, "beta": 0.9, "weight": 1.0, "decay": spec.m3_momentum_decay}]
        adamw_part = decay_groups(others, spec.weight_decay, algorithm="adamw")
        return [M3([{"params": matrices}, *adamw_part], lr=spec.lr, eps=spec.m3_eps, variance=spec.m3_variance,
                   levels=levels, weight_decay=spec.weight_decay, adamw_lr=spec.adamw_lr,
                   adamw_weight_decay=spec.weight_decay)]
    raise ValueError(f"optimizer must be adamw, muon or m3, got {spec.name!r}")


@dataclass
class RunSettings:
    steps: int = 600
    batch_size: int = 8
    gradient_accumulation: int = 1  # micro-batches per step (batch_size must divide evenly)
    eval_every: int = 50
    eval_blocks: int = 32  # validation blocks scored at every evaluation (the same ones each time)
    final_eval_blocks: int = 256  # validation and test blocks scored at the end
    warmup_fraction: float = 0.1
    max_grad_norm: float = 1.0
    data_seed: int = 0
    device: str = "cpu"
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)


def autocast(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))


@torch.no_grad()
def held_out_loss(model, blocks: torch.Tensor, device: str = "cpu", batch_size: int = 8) -> float:
    """Mean next-token loss over every predicted token of ``blocks`` (num_blocks, block_size)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        ids = blocks[start : start + batch_size].to(device)
        with autocast(device):
            loss = model(ids, labels=ids).loss
        count = ids.numel() - len(ids)
        total += loss.item() * count
        tokens += count
    model.train(was_training)
    return total / tokens


def accumulate_gradients(model, batch: torch.Tensor, micro_batches: int, device: str) -> torch.Tensor:
    """Backward over ``micro_batches`` equal slices of the batch; returns the batch's mean loss."""
    if len(batch) % micro_batches:
        raise ValueError(f"gradient_accumulation ({micro_batches}) must divide the batch size ({len(batch)})")
    total = 0.0
    for ids in batch.to(device).chunk(micro_batches):
        with autocast(device):
            loss = model(ids, labels=ids).loss / micro_batches
        loss.backward()
        total = total + loss.detach()
    return total


def train_lm(model, blocks: dict[str, torch.Tensor], settings: RunSettings, description: str = "train",
             progress: bool = True) -> dict:
    """Train on ``batch_order`` of ``blocks["train"]``; validation loss every eval_every steps.

    Returns the curve [{"step", "tokens", "validation_loss"}], the training loss per step, the
    final validation and test losses (over final_eval_blocks each), and tokens/s of training
    (evaluations excluded)."""
    device = settings.device
    model.to(device)
    train_blocks = blocks["train"]
    order = batch_order(len(train_blocks), settings.steps, settings.batch_size, settings.data_seed)
    warmup = max(1, int(settings.warmup_fraction * settings.steps))
    eval_set = blocks["validation"][: settings.eval_blocks]
    run = train_steps(
        model, make_optimizers(model, settings.optimizer),
        lambda step: accumulate_gradients(model, train_blocks[order[step - 1]], settings.gradient_accumulation, device),
        settings.steps, evaluate=lambda: {"validation_loss": held_out_loss(model, eval_set, device)},
        eval_every=settings.eval_every, lr_factor=lambda s: warmup_cosine(s, settings.steps, warmup),
        max_grad_norm=settings.max_grad_norm, description=description, progress=progress,
    )
    tokens_per_step = settings.batch_size * train_blocks.shape[1]
    curve = [{"step": e["step"], "tokens": e["step"] * tokens_per_step, "validation_loss": e["validation_loss"]}
             for e in run["evaluations"]]
    finite = math.isfinite(run["train_loss"][-1])
    final = {split: held_out_loss(model, blocks[split][: settings.final_eval_blocks], device) if finite else float("nan")
             for split in ("validation", "test")}
    return {"curve": curve, "train_loss": run["train_loss"], "final_validation_loss": final["validation"],
            "final_test_loss": final["test"], "steps_run": run["steps_run"], "train_seconds": run["train_seconds"],
            "tokens_per_second": run["steps_run"] * tokens_per_step / run["train_seconds"]}


__all__ = ["OptimizerSpec", "RunSettings", "accumulate_gradients", "decay_groups", "held_out_loss", "hidden_matrices",
           "make_optimizers", "train_lm"]
