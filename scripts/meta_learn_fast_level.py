"""Meta-learn the initial state of the CMS level that learns while reading.

SmolLM2-135M-Instruct retrofitted as the main job does (one new fast level of 384, output starting
at zero), or any Llama-CMS / Hope checkpoint (--model). Each outer step reads a batch of windows
of --segments segments with InContextLearner (the inner loop: the level steps after every
segment) and moves the level's initial weights along the first-order meta-gradient of the loss
of segments 2..n (hope_hf.test_time.meta). Windows come from all but the last --held-out-tokens
tokens of each text, which run_test_time_learning read until it moved to the test splits of
evaluation/lib/corpora.py (those chapters lie inside these texts: not yet held out here).

    python scripts/meta_learn_fast_level.py                         # CPU-sized default
    python -m evaluation.continual.run_test_time_learning --model outputs/meta_fast_level/final
"""

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from hope_hf import InContextLearner
from hope_hf.data import sample_text_path, smollm2_gguf_path
from hope_hf.training.continual import load_model_and_tokenizer
from hope_hf.test_time.meta import learning_parameters, meta_learning_step


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a Llama-CMS/Llama directory or GGUF; default SmolLM2")
    parser.add_argument("--new-level-size", type=int, default=384, help="when retrofitting a plain Llama")
    parser.add_argument("--data", nargs="+", type=Path,
                        default=[sample_text_path("rv1909_es_sample"), sample_text_path("web_en_sample")])
    parser.add_argument("--held-out-tokens", type=int, default=1024, help="tokens at the end of each text never trained on")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--segment-size", type=int, default=128)
    parser.add_argument("--inner-lr", type=float, default=1e-5)
    parser.add_argument("--rule", default="adam")
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--outer-lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/meta_fast_level"))
    return parser.parse_args(argv)


def training_windows(token_ids: list[torch.Tensor], length: int, batch_size: int, generator: torch.Generator):
    """``batch_size`` windows of ``length`` tokens at random offsets, texts drawn by their length."""
    sizes = torch.tensor([len(ids) - length for ids in token_ids], dtype=torch.float)
    if (sizes <= 0).any():
        raise ValueError(f"every text needs more than {length} training tokens; got {[len(t) for t in token_ids]}")
    texts = torch.multinomial(sizes, batch_size, replacement=True, generator=generator)
    starts = [int(torch.randint(int(sizes[t]), (1,), generator=generator)) for t in texts]
    return torch.stack([token_ids[t][s : s + length] for t, s in zip(texts.tolist(), starts)])


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.model or smollm2_gguf_path(), new_level_size=args.new_level_size,
                                                pretrained_period=1_000_000)
    learner = InContextLearner(model, lr=args.inner_lr, segment_size=args.segment_size, periods=[None, 1],
                               rule=args.rule, max_grad_norm=args.max_grad_norm, meta_gradients=True)
    trained = learning_parameters(learner)
    for name, p in model.named_parameters():
        p.requires_grad_(name in trained)
    optimizer = torch.optim.AdamW(trained.values(), lr=args.outer_lr, weight_decay=0.0)
    texts = [tokenizer(path.read_text(), return_tensors="pt").input_ids[0][: -args.held_out_tokens] for path in args.data]
    generator = torch.Generator().manual_seed(args.seed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    log_path = args.output_dir / "meta_log.jsonl"
    started = time.perf_counter()
    with log_path.open("w") as log, tqdm(range(1, args.steps + 1), desc="meta-learning") as steps:
        for step in steps:
            windows = training_windows(texts, args.segments * args.segment_size, args.batch_size, generator)
            record = {"step": step, **meta_learning_step(learner, windows, optimizer),
                      "elapsed_s": round(time.perf_counter() - started, 1)}
            log.write(json.dumps(record) + "\n")
            log.flush()
            steps.set_postfix(outer=f"{record['outer_loss']:.3f}", first=f"{record['first_segment_loss']:.3f}")
    final = args.output_dir / "final"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    print(f"meta-learned level saved to {final}; log in {log_path}")


if __name__ == "__main__":
    main()
