"""Calibrating the rule a model learns with while reading, on validation documents.

``calibrate`` reads every document plainly and with every candidate rule and picks the rule that
lowers the second half's loss most on average, among those that harm nothing: on every document
its second half is no worse than plain reading and no segment of the first half is worse than
plain reading by more than ``max_first_half_harm``. If no candidate qualifies, the choice is plain
reading (lr 0). The choice goes into ``model.config.test_time_learning``, which
``save_pretrained`` writes and ``InContextLearner(model)`` reads.

    entry, table = calibrate(model, [spanish_ids, english_ids, code_ids])
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from .in_context import BUILT_IN_RULE, STATISTICS_FILE, InContextLearner

# candidates by model_type: a Hope trained from scratch takes large steps; pretrained weights
# (a Llama retrofitted with new levels) only small ones (docs/evaluation.md). "every level" reads
# with every level stepping after each segment, the pretrained MLP (level 0) included.
CANDIDATES = {
    "hope": [*(dict(rule="sgd", lr=lr) for lr in (1e-2, 1e-1, 3e-1)),
             *(dict(rule="adam", lr=lr, max_grad_norm=1.0) for lr in (1e-4, 1e-3, 3e-3)),
             *(dict(rule="rms", lr=lr) for lr in (3e-5, 1e-4, 1e-3))],
    "llama_cms": [*(dict(rule="adam", lr=lr, max_grad_norm=1.0) for lr in (1e-5, 3e-5)),
                  *(dict(rule="rms", lr=lr) for lr in (1e-5, 3e-5, 1e-4)),
                  *(dict(rule="rms", lr=lr, periods="every level") for lr in (3e-6, 1e-5))],
}
SEGMENT_SIZE = 128


def halves(losses: list[float]) -> tuple[float, float]:
    """The mean segment loss of the first half of the segments and of the rest."""
    middle = len(losses) // 2
    return sum(losses[:middle]) / middle, sum(losses[middle:]) / (len(losses) - middle)


def compare_with_plain(losses: list[float], plain: list[float]) -> dict:
    """A rule's segment losses against plain reading's on the same document: relative change of the
    second half and of the first half's worst segment."""
    if len(losses) != len(plain) or len(plain) < 2:
        raise ValueError(f"need the same number (>= 2) of segment losses, got {len(losses)} and {len(plain)}")
    middle = len(plain) // 2
    return {"second_half_vs_plain": halves(losses)[1] / halves(plain)[1] - 1,
            "worst_first_half_segment_vs_plain": max(a / b - 1 for a, b in zip(losses[:middle], plain[:middle]))}


def complete_entry(model: nn.Module, candidate: dict) -> dict:
    """A candidate with every option: the built-in rule fills the rest, segments of SEGMENT_SIZE,
    and the periods of the model's current entry (which levels learn: a retrofit's pretrained MLP
    stays frozen); periods "every level" is a period of 1 for each level."""
    current = getattr(model.config, "test_time_learning", None) or {}
    entry = {**BUILT_IN_RULE, "segment_size": SEGMENT_SIZE, "periods": current.get("periods"), **candidate}
    if entry["periods"] == "every level":
        entry["periods"] = [1] * len(model.config.cms_levels)
    return entry


def calibrate(model: nn.Module, documents: list[torch.Tensor], candidates: list[dict] | None = None,
              statistics: dict | None = None, max_first_half_harm: float = 0.01,
              set_config: bool = True) -> tuple[dict, list[dict]]:
    """(the chosen entry, one row per candidate), reading each of ``documents`` ((T,) token ids,
    validation text, each at least two segments long) with every candidate. ``candidates``: partial
    entries (default: ``CANDIDATES`` for the model's type); rule "rms" reads with ``statistics``
    (``gradient_statistics`` of the CMS levels on training text). With ``set_config`` the choice
    becomes ``model.config.test_time_learning``."""
    if candidates is None:
        if model.config.model_type not in CANDIDATES:
            raise ValueError(f"no default candidates for model_type {model.config.model_type!r}; "
                             f"give candidates (defaults exist for {sorted(CANDIDATES)})")
        candidates = CANDIDATES[model.config.model_type]
    if not documents or not candidates:
        raise ValueError("calibrate needs at least one document and one candidate")
    entries = [complete_entry(model, candidate) for candidate in candidates]
    if statistics is None and any(entry["rule"] == "rms" for entry in entries):
        raise ValueError("candidates of rule 'rms' need statistics (hope_hf.test_time.gradient_statistics)")
    plain_entries = {e["segment_size"]: {**e, "lr": 0.0} for e in entries}
    for size, entry in plain_entries.items():
        if any(len(ids) < 2 * size + 1 for ids in documents):
            raise ValueError(f"every document must span at least two segments of {size} tokens")
    read = lambda entry, ids: InContextLearner(model, **entry, statistics=statistics).read(ids[None])[0].segment_losses
    with tqdm(total=len(documents) * (len(entries) + len(plain_entries)), desc="calibrating test-time learning") as bar:
        plain = {}
        for size, entry in plain_entries.items():
            plain[size] = [read(entry, ids) for ids in documents]
            bar.update(len(documents))
        table = []
        for entry in entries:
            per_document = []
            for ids, base in zip(documents, plain[entry["segment_size"]]):
                per_document.append(compare_with_plain(read(entry, ids), base))
                bar.update(1)
            mean = sum(d["second_half_vs_plain"] for d in per_document) / len(per_document)
            harmless = all(d["second_half_vs_plain"] <= 0 and d["worst_first_half_segment_vs_plain"] <= max_first_half_harm
                           for d in per_document)
            table.append({"entry": entry, "documents": per_document, "mean_second_half_vs_plain": mean, "harmless": harmless})
    qualified = [row for row in table if row["harmless"] and row["mean_second_half_vs_plain"] < 0]
    chosen = (min(qualified, key=lambda row: row["mean_second_half_vs_plain"])["entry"] if qualified
              else plain_entries[entries[0]["segment_size"]])
    if set_config:
        model.config.test_time_learning = chosen
    return chosen, table


def save_entry(folder: str | Path, entry: dict, statistics: dict | None = None) -> Path:
    """Write ``entry`` as ``test_time_learning`` into a saved model's config.json (the weights and
    every other field stay as they are) and ``statistics`` (needed by rule "rms") beside it, as STATISTICS_FILE."""
    if entry["rule"] == "rms" and statistics is None:
        raise ValueError("an entry of rule 'rms' is saved with its statistics")
    if statistics is not None:
        save_file({name: t.contiguous() for name, t in statistics.items()}, Path(folder) / STATISTICS_FILE)
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    config["test_time_learning"] = entry
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


__all__ = ["CANDIDATES", "calibrate", "compare_with_plain", "complete_entry", "halves", "save_entry"]
