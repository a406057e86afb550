"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology") and a small training loop
to compare mixers on it.

A sequence first lists ``num_kv_pairs`` key/value pairs, then asks every key again, in a random
order, at random places of the rest of the sequence; the model must answer each query with the
value that followed that key. Only the answers are scored (labels are -100 elsewhere).

    k1 v1 k2 v2 ... kN vN   0 0 k2 v2 0 k1 v1 0 0 ... kN vN 0

Layout (as Zoology, with the answers also present in the input so that the sequence reads as a
normal language-model sample): token 0 is filler, keys come from [1, vocab_size // 2), values
from [vocab_size // 2, vocab_size); keys and values are distinct within a sequence. Labels
follow the Hugging Face convention (``labels[t]`` is predicted from position t - 1), so the
label of each query-answer position is its value and the model's prediction is read at the
query key.

    task = MQARTask(vocab_size=128, seq_len=64, num_kv_pairs=8)
    history = train_mqar(mqar_model_config("titans", task), task, steps=200)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

IGNORE_INDEX = -100
FILLER_TOKEN = 0

# The three mixers compared: self-referential Titans, attention, and Titans with projections
# frozen to their meta-learned initial memories (a Gated-DeltaNet-like ablation).
MIXER_VARIANTS = {
    "titans": dict(mixer="titans"),
    "attention": dict(mixer="attention"),
    "titans_static": dict(mixer="titans", titans_self_referential=False),
}


@dataclass(frozen=True)
class MQARTask:
    """Shape of the synthetic task. Needs seq_len >= 4 * num_kv_pairs (pairs + one slot of two
    tokens per query) and num_kv_pairs < vocab_size // 2 (distinct keys and values)."""

    vocab_size: int = 128
    seq_len: int = 64
    num_kv_pairs: int = 8

    def __post_init__(self):
        for name in ("vocab_size", "seq_len", "num_kv_pairs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.seq_len < 4 * self.num_kv_pairs:
            raise ValueError(f"seq_len must be >= 4 * num_kv_pairs = {4 * self.num_kv_pairs} (the pairs, then a key "
                             f"and its answer per query), got seq_len={self.seq_len}")
        if self.num_kv_pairs >= self.vocab_size // 2:
            raise ValueError(f"num_kv_pairs must be < vocab_size // 2 = {self.vocab_size // 2} (distinct keys and "
                             f"values, token 0 is filler), got num_kv_pairs={self.num_kv_pairs}")


def sample_without_replacement(batch: int, low: int, high: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, count) distinct integers from [low, high) per row."""
    return torch.rand(batch, high - low, generator=generator).argsort(dim=-1)[:, :count] + low


def make_mqar_batch(task: MQARTask, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` MQAR sequences: (input_ids, labels), both (batch_size, seq_len) int64."""
    n, half = task.num_kv_pairs, task.vocab_size // 2
    keys = sample_without_replacement(batch_size, 1, half, n, generator)
    values = sample_without_replacement(batch_size, half, task.vocab_size, n, generator)
    input_ids = torch.full((batch_size, task.seq_len), FILLER_TOKEN, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    input_ids[:, 0 : 2 * n : 2], input_ids[:, 1 : 2 * n : 2] = keys, values

    num_slots = (task.seq_len - 2 * n) // 2  # two-token query slots after the pairs
    slots = sample_without_replacement(batch_size, 0, num_slots, n, generator).sort(dim=-1).values
    query_order = sample_without_replacement(batch_size, 0, n, n, generator)  # which pair each slot asks
    query_positions = 2 * n + 2 * slots
    rows = torch.arange(batch_size)[:, None]
    input_ids[rows, query_positions] = keys.gather(1, query_order)
    input_ids[rows, query_positions + 1] = values.gather(1, query_order)
    labels[rows, query_positions + 1] = values.gather(1, query_order)
    return input_ids, labels


def mqar_model_config(variant: str, task: MQARTask, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                      titans_chunk_size: int = 16, **overrides):
    """A tiny HopeConfig for ``variant`` in MIXER_VARIANTS, sized for the task."""
    from hope_hf import HopeConfig

    if variant not in MIXER_VARIANTS:
        raise ValueError(f"variant must be one of {tuple(MIXER_VARIANTS)}, got {variant!r}")
    fields = dict(vocab_size=task.vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=num_heads, intermediate_size=2 * hidden_size,
                  max_position_embeddings=max(task.seq_len, 64), titans_chunk_size=titans_chunk_size,
                  pad_token_id=None, bos_token_id=None, eos_token_id=None, tie_word_embeddings=True)
    fields.update(MIXER_VARIANTS[variant])
    fields.update(overrides)
    return HopeConfig(**fields)


def answer_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of answer positions (labels != -100) whose argmax prediction (read one position
    earlier, at the query key) is the value."""
    predictions, targets = logits[:, :-1].argmax(-1), labels[:, 1:]
    answered = targets != IGNORE_INDEX
    return (predictions[answered] == targets[answered]).float().mean().item()


@torch.no_grad()
def evaluate_mqar(model, input_ids: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> dict:
    """Loss and answer accuracy on held-out sequences (averaged over answers)."""
    model.eval()
    loss_sum, correct, answers = 0.0, 0.0, 0
    for start in range(0, len(input_ids), batch_size):
        ids, lab = input_ids[start : start + batch_size], labels[start : start + batch_size]
        output = model(ids, labels=lab)
        count = int((lab[:, 1:] != IGNORE_INDEX).sum())
        loss_sum += output.loss.item() * count
        correct += answer_accuracy(output.logits, lab) * count
        answers += count
    model.train()
    return {"loss": loss_sum / answers, "accuracy": correct / answers}


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_mqar(config, task: MQARTask, steps: int = 200, batch_size: int = 32, learning_rate: float = 3e-3,
               weight_decay: float = 0.1, eval_every: int = 25, eval_examples: int = 256, seed: int = 0,
               progress: bool = True, description: str = "mqar") -> dict:
    """Train a fresh HopeForCausalLM(config) on fresh MQAR batches with AdamW (warm-up + cosine,
    gradients clipped at 1); evaluate on ``eval_examples`` held-out sequences (their own
    generator) at step 0, every ``eval_every`` steps and at the end. Deterministic for a seed.
    Returns the train loss per step and the eval points [{"step", "loss", "accuracy"}, ...]."""
    from hope_hf import HopeForCausalLM

    for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every),
                        ("eval_examples", eval_examples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    torch.manual_seed(seed)
    model = HopeForCausalLM(config).train()
    train_generator = torch.Generator().manual_seed(seed)
    held_out = make_mqar_batch(task, eval_examples, torch.Generator().manual_seed(seed + 1_000_003))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, max(1, steps // 10)))

    train_loss, evals = [], [{"step": 0, **evaluate_mqar(model, *held_out)}]
    bar = tqdm(range(1, steps + 1), desc=description, disable=not progress)
    for step in bar:
        input_ids, labels = make_mqar_batch(task, batch_size, train_generator)
        loss = model(input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_loss.append(loss.item())
        if step % eval_every == 0 or step == steps:
            evals.append({"step": step, **evaluate_mqar(model, *held_out)})
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{evals[-1]['accuracy']:.3f}")
    return {"task": asdict(task), "train_loss": train_loss, "eval": evals, "final_accuracy": evals[-1]["accuracy"],
            "num_parameters": sum(p.numel() for p in model.parameters())}


__all__ = ["MIXER_VARIANTS", "MQARTask", "answer_accuracy", "evaluate_mqar", "make_mqar_batch", "mqar_model_config",
           "train_mqar"]
