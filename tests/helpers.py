import pytest
import torch

from hope_hf import HopeConfig, HopeForCausalLM

TWO_LEVELS = [{"intermediate_size": 48, "update_period": 1}, {"intermediate_size": 32, "update_period": 4}]

CONFIGS = {
    "titans": dict(mixer="titans"),
    "titans_static": dict(mixer="titans", titans_self_referential=False),
    "titans_value_input": dict(mixer="titans", titans_value_projection=True, titans_normalize_values=False),
    "titans_deep": dict(mixer="titans", titans_memory_depth=2),
    "attention": dict(mixer="attention", num_key_value_heads=2),
    "hybrid": dict(mixer=["titans", "attention", "titans"], num_hidden_layers=3),
    "hybrid_sliding": dict(mixer=["attention", "titans"], sliding_window=6),
}


def tiny_config(**overrides) -> HopeConfig:
    fields = dict(
        vocab_size=101, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=48,
        titans_chunk_size=4, cms_levels=TWO_LEVELS, pad_token_id=0, bos_token_id=1, eos_token_id=None,
    )
    fields.update(overrides)
    return HopeConfig(**fields)


def tiny_model(**overrides) -> HopeForCausalLM:
    return HopeForCausalLM(tiny_config(**overrides)).eval()


def random_ids(batch, length, vocab=101):
    return torch.randint(2, vocab, (batch, length))


def train_on_repeated_motif(model, optimizer, steps: int) -> list[float]:
    """Train on one 8-token motif repeated 4 times (something a memory can pick up); the losses."""
    pattern = random_ids(1, 8).repeat(2, 4)
    losses = []
    for _ in range(steps):
        loss = model(pattern, labels=pattern).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def has_cpp_compiler() -> bool:
    """Whether inductor finds a C++ compiler, which torch.compile needs on CPU."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return bool(get_cpp_compiler())
    except Exception:
        return False


requires_cpp_compiler = pytest.mark.skipif(not has_cpp_compiler(), reason="torch.compile on CPU needs a C++ compiler")


def small_training_data(folder) -> list[str]:
    """scripts/train.py's --data and --tokenizer arguments for 12 lines of the embedded text and a
    300-token BPE trained on them, written under ``folder``."""
    from hope_hf.data import sample_text_path
    from hope_hf.training import train_bpe_tokenizer

    lines = sample_text_path().read_text().splitlines()[:12]
    (folder / "text.txt").write_text("\n".join(lines) + "\n")
    train_bpe_tokenizer(lines, 300).save_pretrained(folder / "tokenizer")
    return ["--data", str(folder / "text.txt"), "--tokenizer", str(folder / "tokenizer")]
