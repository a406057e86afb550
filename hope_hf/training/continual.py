"""Continual pretraining of a Llama on a new domain, measuring forgetting on an old one.

Shared by scripts/continual_pretrain.py (the main job) and
evaluation/continual/run_forgetting.py (full fine-tune vs Llama-CMS strategies).
"""

import copy
import json
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from ..modeling.modeling_llama_cms import LlamaCMSForCausalLM, load_llama
from ..optim.cms_levels import is_cms_module
from .trainer import collate


def is_llama_cms_dir(source: Path) -> bool:
    source = Path(source)
    config = source / "config.json"
    return source.is_dir() and config.exists() and json.loads(config.read_text()).get("model_type") == "llama_cms"


def load_tokenizer(source: Path):
    """The tokenizer of a checkpoint directory or of a GGUF file."""
    source = Path(source)
    if source.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    return AutoTokenizer.from_pretrained(source)


def load_plain_llama(source: Path) -> LlamaForCausalLM:
    """A LlamaForCausalLM (fp32) from a directory or a GGUF file. A GGUF-loaded model refuses
    ``save_pretrained``, so its weights are copied into a plain LlamaForCausalLM."""
    loaded = load_llama(source)
    if getattr(loaded, "hf_quantizer", None) is None:
        return loaded
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config).to(loaded.dtype)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = copy.deepcopy(loaded.generation_config)
    return plain.eval()


def retrofit_with_fast_level(llama, new_level_size: int, pretrained_period: int) -> LlamaCMSForCausalLM:
    """A Llama-CMS from a Llama (model, directory or GGUF): level 0 is the pretrained MLP with
    period ``pretrained_period``; one new level "fast" (period 1) of ``new_level_size``, its
    gate/up warm-started from the pretrained MLP's rows and its output starting at zero."""
    levels = [{"name": "fast", "intermediate_size": new_level_size, "update_period": 1}]
    return LlamaCMSForCausalLM.from_llama(llama, cms_levels=levels, pretrained_update_period=pretrained_period,
                                          warm_start=True)


def load_model_and_tokenizer(source: Path, new_level_size: int, pretrained_period: int):
    """A Llama-CMS directory as it is, or a Llama directory / GGUF file retrofitted with one fast level."""
    source = Path(source)
    if is_llama_cms_dir(source):
        return AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    return retrofit_with_fast_level(source, new_level_size, pretrained_period), load_tokenizer(source)


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
def perplexity(model, blocks, batches: int, batch_size: int) -> float:
    """exp of the mean next-token loss over the first ``batches`` batches of ``blocks``."""
    model.eval()
    losses = [model(input_ids=b, labels=b).loss for _, b in zip(range(batches), DataLoader(blocks, batch_size, collate_fn=collate))]
    return math.exp(torch.stack(losses).mean().item())


__all__ = ["is_llama_cms_dir", "load_model_and_tokenizer", "load_plain_llama", "load_tokenizer", "new_level_parameter_ids", "perplexity",
           "retrofit_with_fast_level", "train_only_new_levels"]
