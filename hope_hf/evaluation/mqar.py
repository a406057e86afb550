"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology") and a small training loop
to compare mixers on it.

A sequence first lists ``num_kv_pairs`` key/value pairs; then every key is asked once more, at
a power-law distributed distance into the query region, and the model must answer with the
value that followed that key. The answer is a label only: the input holds filler (0) at the
scored position, so nothing in the input tells which pairs were already asked (a model cannot
score above chance by elimination or by copying any value seen).

    input   k1 v1 k2 v2 ... kN vN  0 0 k2 0 0 0 k1 0 ... kN 0 0
    labels   .  .  .  .      .  .  . . .  v2 . . .  v1 ...  . vN .   (-100 where '.')

As in Zoology: token 0 is filler, keys come from [1, vocab_size // 2), values from
[vocab_size // 2, vocab_size), distinct within a sequence; the query of pair i sits at
2N + 2 * gap_i with the gaps drawn without replacement from [0, (seq_len - 2N) // 2) with
probability ~ (gap + 1) ** (power_a - 1) (power_a = 0.01: mostly early). Unlike Zoology's
default, the filler stays 0 (no random tokens). Labels follow the Hugging Face convention
(``labels[t]`` is predicted at position t - 1, i.e. at the query key).

    task = MQARTask(vocab_size=128, seq_len=64, num_kv_pairs=8)
    run = train_mqar(lambda: mqar_model("titans", task), task, steps=200)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..training.loop import train_steps, warmup_cosine

IGNORE_INDEX = -100
FILLER_TOKEN = 0

# Mixers compared inside the same Hope block. gated_deltanet swaps the titans mixer for the
# plain Gated DeltaNet of hope_hf.modeling.gated_deltanet_baseline (a baseline, not part of Hope).
MIXER_VARIANTS = {
    "attention": dict(mixer="attention"),
    "gated_deltanet": dict(mixer="titans"),
    "titans": dict(mixer="titans"),
    "titans_static": dict(mixer="titans", titans_self_referential=False),
    "hybrid": dict(mixer=["titans", "attention"]),
}


@dataclass(frozen=True)
class MQARTask:
    """Shape of the synthetic task. Needs seq_len >= 4 * num_kv_pairs (Zoology's bound: the pairs,
    then two slots per query) and num_kv_pairs < vocab_size // 2 (distinct keys, 0 is filler)."""

    vocab_size: int = 128
    seq_len: int = 64
    num_kv_pairs: int = 8
    power_a: float = 0.01

    def __post_init__(self):
        for name in ("vocab_size", "seq_len", "num_kv_pairs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.seq_len < 4 * self.num_kv_pairs:
            raise ValueError(f"seq_len must be >= 4 * num_kv_pairs = {4 * self.num_kv_pairs} (the pairs, then two "
                             f"slots per query), got seq_len={self.seq_len}")
        if self.num_kv_pairs >= self.vocab_size // 2:
            raise ValueError(f"num_kv_pairs must be < vocab_size // 2 = {self.vocab_size // 2} (distinct keys and "
                             f"values, token 0 is filler), got num_kv_pairs={self.num_kv_pairs}")
        if not 0 < self.power_a <= 1:
            raise ValueError(f"power_a must be in (0, 1], got {self.power_a!r}")


def sample_without_replacement(batch: int, low: int, high: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, count) distinct integers from [low, high) per row, uniformly."""
    return torch.rand(batch, high - low, generator=generator).argsort(dim=-1)[:, :count] + low


def power_law_gaps(batch: int, space: int, count: int, power_a: float, generator: torch.Generator) -> torch.Tensor:
    """(batch, count) distinct gaps from [0, space), drawn one after another with probability
    proportional to (gap + 1) ** (power_a - 1) among the gaps not drawn yet."""
    weights = torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    return torch.multinomial(weights.expand(batch, space), count, replacement=False, generator=generator)


def make_mqar_batch(task: MQARTask, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` MQAR sequences: (input_ids, labels), both (batch_size, seq_len) int64."""
    n, half = task.num_kv_pairs, task.vocab_size // 2
    keys = sample_without_replacement(batch_size, 1, half, n, generator)
    values = sample_without_replacement(batch_size, half, task.vocab_size, n, generator)
    input_ids = torch.full((batch_size, task.seq_len), FILLER_TOKEN, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    input_ids[:, 0 : 2 * n : 2], input_ids[:, 1 : 2 * n : 2] = keys, values

    gaps = power_law_gaps(batch_size, (task.seq_len - 2 * n) // 2, n, task.power_a, generator)
    query_positions = 2 * n + 2 * gaps  # pair i is asked at query_positions[:, i]
    rows = torch.arange(batch_size)[:, None]
    input_ids[rows, query_positions] = keys
    labels[rows, query_positions + 1] = values  # the input there stays filler
    return input_ids, labels


# Answerers: stand-ins for a model, used to check that the task measures recall. Each returns
# guesses aligned with the labels (guesses[b, t] is made from input_ids[b, :t]).

def _answerer(input_ids: torch.Tensor, labels: torch.Tensor, num_kv_pairs: int, pick) -> torch.Tensor:
    guesses = torch.full_like(labels, IGNORE_INDEX)
    for b, t in (labels != IGNORE_INDEX).nonzero().tolist():
        seen = input_ids[b, :t].tolist()
        pairs = dict(zip(seen[0 : 2 * num_kv_pairs : 2], seen[1 : 2 * num_kv_pairs : 2]))
        guesses[b, t] = pick(seen, pairs)
    return guesses


def oracle_answers(input_ids, labels, num_kv_pairs: int) -> torch.Tensor:
    """Looks up the key just read among the pairs: recall."""
    return _answerer(input_ids, labels, num_kv_pairs, lambda seen, pairs: pairs[seen[-1]])


def elimination_answers(input_ids, labels, num_kv_pairs: int, generator: torch.Generator) -> torch.Tensor:
    """Picks at random among the values of the pairs not yet seen answered in the input, with no
    key-to-value lookup. Scores well above chance when answers are visible in the input."""
    def pick(seen, pairs):
        answered = set(seen[2 * num_kv_pairs :])
        left = [v for v in pairs.values() if v not in answered] or list(pairs.values())
        return left[int(torch.randint(len(left), (), generator=generator))]
    return _answerer(input_ids, labels, num_kv_pairs, pick)


def copy_answers(input_ids, labels, num_kv_pairs: int, generator: torch.Generator) -> torch.Tensor:
    """Copies a value seen anywhere in the context, at random."""
    def pick(seen, pairs):
        values = sorted(set(seen) & set(pairs.values()))
        return values[int(torch.randint(len(values), (), generator=generator))]
    return _answerer(input_ids, labels, num_kv_pairs, pick)


def guess_accuracy(guesses: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of answer positions (labels != -100) guessed right."""
    answered = labels != IGNORE_INDEX
    return (guesses[answered] == labels[answered]).float().mean().item()


def answer_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of answer positions whose argmax prediction (read one position earlier, at the
    query key) is the value."""
    guesses = torch.full_like(labels, IGNORE_INDEX)
    guesses[:, 1:] = logits[:, :-1].argmax(-1)
    return guess_accuracy(guesses, labels)


def mqar_model_config(variant: str, task: MQARTask, hidden_size: int = 64, num_layers: int = 2, head_dim: int = 32,
                      titans_chunk_size: int = 16, **overrides):
    """A tiny HopeConfig for ``variant`` in MIXER_VARIANTS, sized for the task (heads of ``head_dim``)."""
    from hope_hf import HopeConfig

    if variant not in MIXER_VARIANTS:
        raise ValueError(f"variant must be one of {tuple(MIXER_VARIANTS)}, got {variant!r}")
    if hidden_size % head_dim:
        raise ValueError(f"head_dim ({head_dim}) must divide hidden_size ({hidden_size})")
    fields = dict(vocab_size=task.vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=hidden_size // head_dim, intermediate_size=2 * hidden_size,
                  max_position_embeddings=max(task.seq_len, 64), titans_chunk_size=titans_chunk_size,
                  pad_token_id=None, bos_token_id=None, eos_token_id=None, tie_word_embeddings=True)
    mixer = MIXER_VARIANTS[variant]
    if variant == "hybrid":  # alternate titans and attention layers
        mixer = dict(mixer=[mixer["mixer"][i % 2] for i in range(num_layers)])
    fields.update(mixer)
    fields.update(overrides)
    return HopeConfig(**fields)


def mqar_model(variant: str, task: MQARTask, **config_fields):
    """A freshly initialised HopeForCausalLM for ``variant`` (see mqar_model_config)."""
    from hope_hf import HopeForCausalLM

    from ..modeling.gated_deltanet_baseline import use_gated_deltanet

    model = HopeForCausalLM(mqar_model_config(variant, task, **config_fields))
    if variant == "gated_deltanet":
        use_gated_deltanet(model)
    return model


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


def train_mqar(make_model, task: MQARTask, steps: int = 200, batch_size: int = 32, learning_rate: float = 3e-3,
               weight_decay: float = 0.1, eval_every: int = 25, eval_examples: int = 256, seed: int = 0,
               progress: bool = True, description: str = "mqar", stop_at_accuracy: float | None = None) -> dict:
    """Train ``make_model()`` (a fresh model; a HopeConfig also works) on fresh MQAR batches with
    AdamW (warm-up + cosine, gradients clipped at 1) on ``hope_hf.training.train_steps``; evaluate
    on ``eval_examples`` validation sequences (their own generator) at step 0, every ``eval_every``
    steps and at the end. ``stop_at_accuracy`` ends training early once a validation evaluation
    reaches it (a non-finite training loss ends it at once). The trained model is then scored on
    ``eval_examples`` test sequences (another generator) that no choice has seen. Deterministic for
    a seed. Returns the train loss per step, the validation points [{"step", "loss", "accuracy"},
    ...], the final validation accuracy and the test accuracy."""
    from hope_hf import HopeConfig, HopeForCausalLM

    for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every),
                        ("eval_examples", eval_examples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    torch.manual_seed(seed)
    model = HopeForCausalLM(make_model) if isinstance(make_model, HopeConfig) else make_model()
    train_generator = torch.Generator().manual_seed(seed)
    validation = make_mqar_batch(task, eval_examples, torch.Generator().manual_seed(seed + 1_000_003))
    test = make_mqar_batch(task, eval_examples, torch.Generator().manual_seed(seed + 2_000_003))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)

    def backward(step: int) -> torch.Tensor:
        input_ids, labels = make_mqar_batch(task, batch_size, train_generator)
        loss = model(input_ids, labels=labels).loss
        loss.backward()
        return loss.detach()

    run = train_steps(model, [optimizer], backward, steps, evaluate=lambda: evaluate_mqar(model, *validation),
                      eval_every=eval_every, lr_factor=lambda s: warmup_cosine(s, steps, max(1, steps // 10)),
                      max_grad_norm=1.0, description=description, progress=progress,
                      stop=None if stop_at_accuracy is None else lambda e: e["accuracy"] >= stop_at_accuracy)
    evals = run["evaluations"]
    return {"task": asdict(task), "train_loss": run["train_loss"], "eval": evals, "final_accuracy": evals[-1]["accuracy"],
            "test_accuracy": evaluate_mqar(model, *test)["accuracy"], "steps_run": run["steps_run"],
            "num_parameters": sum(p.numel() for p in model.parameters())}


__all__ = ["MIXER_VARIANTS", "MQARTask", "answer_accuracy", "copy_answers", "elimination_answers", "evaluate_mqar",
           "guess_accuracy", "make_mqar_batch", "mqar_model", "mqar_model_config", "oracle_answers", "train_mqar"]
