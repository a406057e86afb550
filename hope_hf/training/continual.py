"""Continual pretraining of a Llama on a new domain, measuring forgetting on an old one.

Shared by scripts/continual_pretrain.py (the main job) and
evaluation/continual/run_forgetting.py (full fine-tune vs Llama-CMS strategies).
"""

import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..modeling.llama_loading import is_llama_cms_dir, load_tokenizer
from ..modeling.modeling_llama_cms import LlamaCMSForCausalLM
from ..optim.cms_levels import is_cms_module
from .trainer import collate, document_inputs


def new_levels(new_level_size: int, slow_level_period: int = 0) -> list[dict]:
    """A new "fast" level (period 1) and, if ``slow_level_period`` > 0, a "slow" one, each ``new_level_size`` wide."""
    levels = [{"name": "fast", "intermediate_size": new_level_size, "update_period": 1}]
    if slow_level_period > 0:
        levels.append({"name": "slow", "intermediate_size": new_level_size, "update_period": slow_level_period})
    return levels


def retrofit_with_fast_level(llama, new_level_size: int, pretrained_period: int,
                             slow_level_period: int = 0) -> LlamaCMSForCausalLM:
    """A Llama-CMS from a Llama (model, directory or GGUF): level 0 is the pretrained MLP with
    period ``pretrained_period``; a new level "fast" (period 1) of ``new_level_size`` (and a "slow"
    one if ``slow_level_period`` > 0), gate/up warm-started from the pretrained MLP's rows and
    outputs starting at zero."""
    return LlamaCMSForCausalLM.from_llama(llama, cms_levels=new_levels(new_level_size, slow_level_period),
                                          pretrained_update_period=pretrained_period, warm_start=True)


def load_model_and_tokenizer(source: Path, new_level_size: int, pretrained_period: int, slow_level_period: int = 0):
    """A Llama-CMS directory as it is, or a Llama directory / GGUF file retrofitted with new levels."""
    source = Path(source)
    if is_llama_cms_dir(source):
        return AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    return retrofit_with_fast_level(source, new_level_size, pretrained_period, slow_level_period), load_tokenizer(source)


def new_level_parameter_ids(model) -> set[int]:
    """ids of the parameters of every CMS level after level 0 (the levels added to the Llama)."""
    return {id(p) for m in model.modules() if is_cms_module(m) for level in m.level_parameters()[1:] for p in level}


def train_only_new_levels(model) -> int:
    """Freeze everything but the new CMS levels (level 0, the pretrained MLP, attention, embeddings
    and norms stay as they were); returns the number of trainable parameters."""
    new_levels = new_level_parameter_ids(model)
    if not new_levels:
        raise ValueError(f"{type(model).__name__} has no CMS level beyond level 0 to train")
    for p in model.parameters():
        p.requires_grad_(id(p) in new_levels)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def perplexity(model, blocks, batches: int, batch_size: int, eos_token_id: int | None = None) -> float:
    """exp of the mean next-token loss over the first ``batches`` batches of ``blocks`` (blocks of
    one length: each batch weighs by its number of blocks, so a short last batch counts no more
    than its blocks); with ``eos_token_id`` each document of a block is read alone
    (``trainer.document_inputs``)."""
    model.eval()
    with torch.inference_mode():
        pairs = [(model(**document_inputs(b, eos_token_id)).loss, len(b))
                 for _, b in zip(range(batches), DataLoader(blocks, batch_size, collate_fn=collate))]
    return math.exp(sum(loss.item() * n for loss, n in pairs) / sum(n for _, n in pairs))


def held_out_curves(history: list[dict], new_domain: str, before: dict) -> dict:
    """{domain: [[step, perplexity], ...]} from a training history, step 0 = ``before``."""
    curves = {name: [[0, value]] for name, value in before.items()}
    for record in history:
        if "eval_perplexity" in record:
            curves[new_domain].append([record["step"], record["eval_perplexity"]])
            for name, value in record.get("eval_perplexity_other", {}).items():
                curves[name].append([record["step"], value])
    return curves


def verdict(before: dict, after: dict, new_domain: str) -> str:
    """One line such as "spanish 2x better; english +3%, code +5%" (old domains: perplexity change)."""
    gain = before[new_domain] / after[new_domain]
    head = f"{new_domain} {gain:.2f}x better" if gain >= 1 else f"{new_domain} {1 / gain:.2f}x worse"
    old = ", ".join(f"{name} {100 * (after[name] / before[name] - 1):+.1f}%" for name in before if name != new_domain)
    return f"{head}; {old}" if old else head


def plot_curves(losses: list, curves: dict, png, title: str = "", curve_label: str = "held-out perplexity") -> None:
    """Training loss per step (left) beside each domain's ``curve_label`` relative to step 0
    (right, absolute values at the ends)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if losses:
        left.plot(*zip(*losses), label="training loss (new domain)")
    left.set_xlabel("optimizer step")
    left.set_ylabel("loss (nats/token)")
    left.legend(fontsize=8)
    for name, curve in curves.items():
        steps, values = zip(*curve)
        right.plot(steps, [v / values[0] for v in values], marker="o", ms=3,
                   label=f"{name}: {values[0]:.1f} -> {values[-1]:.1f}")
    right.axhline(1.0, color="gray", lw=0.6)
    right.axhline(1.1, color="gray", lw=0.6, ls=":", label="+10%")
    right.set_xlabel("optimizer step")
    right.set_ylabel(f"{curve_label} / step 0")
    right.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


__all__ = ["load_model_and_tokenizer", "new_level_parameter_ids", "new_levels",
           "perplexity", "plot_curves", "retrofit_with_fast_level", "train_only_new_levels", "verdict"]
