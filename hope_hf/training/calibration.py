"""Calibrate a saved model's test-time learning rule on the validation documents of the domains.

    python -m hope_hf.training.calibration outputs/train/final                  # spanish, english, code
    python -m hope_hf.training.calibration outputs/continual_pretrain/final --domains spanish my.txt --tokens 2048

Reads the first --tokens validation tokens of every domain (hope_hf.training.domains: the split
no training run of this package learns from) plainly and with every candidate rule
(hope_hf.test_time.calibration.CANDIDATES for the model's type; rule "rms" with the gradient RMS
of the CMS levels on the first training blocks of the same domains), and writes the chosen rule
into the folder's config.json as ``test_time_learning`` (and, for rule "rms", the statistics as
test_time_statistics.safetensors), which ``InContextLearner(model)`` then uses.
scripts/train.py and the main job run this at the end.
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..test_time.calibration import SEGMENT_SIZE, calibrate, save_entry
from ..test_time.dynamic_evaluation import gradient_statistics, parameter_names
from .domains import DOMAINS, domain_documents, split_documents, text_documents, validation_text_ids

CALIBRATION_TOKENS = 1024
STATISTICS_BLOCKS = 8  # training blocks per domain for rule "rms"'s statistics
REPORT_FILE = "test_time_calibration.json"  # beside the model: every candidate's scores


def training_blocks(sources: list[str], tokenizer, block_size: int, count: int = STATISTICS_BLOCKS) -> torch.Tensor:
    """(count * len(sources), block_size): the first ``count`` blocks of each domain's train
    documents, joined in order."""
    blocks = []
    for source in sources:
        documents = split_documents(domain_documents(source) if source in DOMAINS else text_documents(source))["train"]
        ids = []
        for text in documents["text"]:
            ids += tokenizer(text + "\n", add_special_tokens=False).input_ids
            if len(ids) >= count * block_size:
                break
        if len(ids) < count * block_size:
            raise ValueError(f"domain {source!r}: its training documents hold {len(ids)} tokens, fewer than "
                             f"{count} blocks of {block_size}")
        blocks.append(torch.tensor(ids[: count * block_size]).view(count, block_size))
    return torch.cat(blocks)


def calibrate_on_domains(model, tokenizer, sources: list[str], tokens: int = CALIBRATION_TOKENS,
                         folder: str | Path | None = None, candidates: list[dict] | None = None) -> dict:
    """Calibrate ``model`` on ``tokens`` validation tokens of each domain (a name or a .txt file);
    with ``folder``, write the choice into its config.json, the statistics beside it and the report
    as REPORT_FILE. Returns the report: the choice and every candidate's scores."""
    if tokens < 2 * SEGMENT_SIZE + 1:
        raise ValueError(f"calibration reads at least two segments of {SEGMENT_SIZE} tokens and one more: "
                         f"tokens (--calibrate-tokens) must be >= {2 * SEGMENT_SIZE + 1}, got {tokens}")
    documents = [validation_text_ids(source, tokenizer, tokens) for source in sources]
    model.eval().requires_grad_(True)  # training is over: every CMS level may learn while reading
    statistics = gradient_statistics(model, training_blocks(sources, tokenizer, SEGMENT_SIZE), parameter_names(model, "mlp"))
    chosen, table = calibrate(model, documents, candidates, statistics)
    report = {"chosen": chosen, "validation_tokens": {source: tokens for source in sources}, "candidates": table}
    if folder is not None:
        save_entry(folder, chosen, statistics)
        (Path(folder) / REPORT_FILE).write_text(json.dumps(report, indent=1))
    print(f"test-time learning rule (chosen on {tokens} validation tokens of {', '.join(sources)}): {chosen}")
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a saved model (config.json, weights, tokenizer)")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), help=f"names ({', '.join(DOMAINS)}) or .txt files")
    parser.add_argument("--tokens", type=int, default=CALIBRATION_TOKENS, help="validation tokens read per domain")
    args = parser.parse_args(argv)
    if not (args.folder / "config.json").is_file():
        parser.error(f"{args.folder} holds no config.json")
    if args.tokens < 2 * SEGMENT_SIZE + 1:
        parser.error(f"--tokens must be >= {2 * SEGMENT_SIZE + 1} (two segments of {SEGMENT_SIZE} and one token), got {args.tokens}")
    model = AutoModelForCausalLM.from_pretrained(args.folder)
    tokenizer = AutoTokenizer.from_pretrained(args.folder)
    return calibrate_on_domains(model, tokenizer, args.domains, args.tokens, folder=args.folder)


if __name__ == "__main__":
    main()
