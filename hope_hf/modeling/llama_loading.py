"""Loading a Llama checkpoint and its tokenizer: a transformers folder or a GGUF file (dequantised
to fp32), the form Llama-CMS retrofits and the continual-pretraining experiments start from."""

import copy
import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, LlamaForCausalLM


def is_llama_cms_dir(source: Path) -> bool:
    """Whether ``source`` is a saved Llama-CMS checkpoint folder (model_type "llama_cms")."""
    source = Path(source)
    config = source / "config.json"
    return source.is_dir() and config.exists() and json.loads(config.read_text()).get("model_type") == "llama_cms"


def load_tokenizer(source: Path):
    """The tokenizer of a checkpoint directory or of a GGUF file."""
    source = Path(source)
    if source.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    return AutoTokenizer.from_pretrained(source)


def load_llama(llama, gguf_file: str | None = None) -> LlamaForCausalLM:
    """A LlamaForCausalLM from an object, a directory or a GGUF file (dequantised to fp32), with
    clear errors."""
    if isinstance(llama, nn.Module):
        model_type = getattr(getattr(llama, "config", None), "model_type", None)
        if model_type != "llama":
            raise ValueError(f"from_llama needs a Llama model, got model_type {model_type!r} ({type(llama).__name__})")
        return llama
    path = Path(llama)
    if not path.exists():
        raise FileNotFoundError(f"no Llama checkpoint at {str(path)!r}")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{str(path)!r} is a file but not a .gguf checkpoint")
        path, gguf_file = path.parent, path.name
    if gguf_file is None:
        config_path = path / "config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"no config.json in {str(path)!r}")
        model_type = json.loads(config_path.read_text()).get("model_type")
        if model_type != "llama":
            raise ValueError(f"{str(path)!r} holds a {model_type!r} checkpoint; from_llama needs model_type 'llama'")
    loaded = LlamaForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=torch.float32)
    if loaded.config.model_type != "llama":
        raise ValueError(f"{str(path)!r} holds a {loaded.config.model_type!r} checkpoint; from_llama needs 'llama'")
    # Only the config and state dict are used, so a GGUF-loaded model (which refuses
    # save_pretrained) never needs saving itself.
    return loaded.eval()


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


__all__ = ["is_llama_cms_dir", "load_llama", "load_plain_llama", "load_tokenizer"]
