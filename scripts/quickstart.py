"""Quick start: build a tiny Hope, train it a few steps on the embedded English text, save it,
reload it through AutoModelForCausalLM and generate.

    python scripts/quickstart.py                  # defaults: a 2-layer hybrid, 200 steps
    python scripts/quickstart.py --steps 200 --mixer titans
"""

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

import hope_hf
from hope_hf.data import sample_text_path
from hope_hf.training.hub import add_hub_arguments, finish_model_folder, model_card
from hope_hf.training.tokenizer import train_bpe_tokenizer


def batches(token_ids: torch.Tensor, seq_len: int, batch_size: int, generator: torch.Generator):
    while True:
        starts = torch.randint(0, token_ids.numel() - seq_len - 1, (batch_size,), generator=generator)
        yield torch.stack([token_ids[s : s + seq_len] for s in starts.tolist()])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/quickstart")
    parser.add_argument("--mixer", nargs="+", default=["titans", "attention"], help="one entry, or one per layer")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    add_hub_arguments(parser)
    args = parser.parse_args()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    lines = sample_text_path().read_text(encoding="utf-8").splitlines()
    tokenizer = train_bpe_tokenizer(lines, args.vocab_size)
    token_ids = torch.tensor(tokenizer("\n".join(lines))["input_ids"])
    print(f"embedded text: {len(lines)} chapters, {token_ids.numel():,} tokens")

    mixer = args.mixer[0] if len(args.mixer) == 1 else args.mixer
    config = hope_hf.HopeConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden_size, intermediate_size=2 * args.hidden_size,
        num_hidden_layers=args.num_layers, num_attention_heads=4, mixer=mixer, titans_chunk_size=32,
        cms_levels=[{"intermediate_size": 2 * args.hidden_size, "update_period": 1},
                    {"intermediate_size": args.hidden_size, "update_period": 4}],
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = hope_hf.HopeForCausalLM(config)
    print(f"HopeForCausalLM: {sum(p.numel() for p in model.parameters()):,} parameters, mixers {config.mixers}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    data = batches(token_ids, args.seq_len, args.batch_size, torch.Generator().manual_seed(args.seed))
    model.train()
    with open(out / "train_log.jsonl", "w") as log, tqdm(range(1, args.steps + 1), desc="train") as bar:
        for step in bar:
            start = time.perf_counter()
            batch = next(data)
            loss = model(batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            record = {"step": step, "loss": loss.item(), "tokens_per_s": batch.numel() / (time.perf_counter() - start)}
            log.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.3f}")
    print(f"loss: first step {json.loads((out / 'train_log.jsonl').read_text().splitlines()[0])['loss']:.3f}, "
          f"last step {record['loss']:.3f}")

    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    reloaded = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    probe = next(data)[:2]
    with torch.no_grad():
        same = torch.equal(model.eval()(probe).logits, reloaded(probe).logits)
    print(f"saved to {out / 'model'}; reloaded as {type(reloaded).__name__}; identical logits: {same}")

    prompt = tokenizer("In the beginning, God", return_tensors="pt")
    generated = reloaded.generate(**prompt, max_new_tokens=40, do_sample=False)
    print("generate():", tokenizer.decode(generated[0], skip_special_tokens=True))
    if not same:
        raise SystemExit("reloaded model differs from the trained one")
    first_loss = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])["loss"]
    card = model_card(
        model, f"A tiny Hope model from `scripts/quickstart.py`: {args.steps} AdamW steps, a demonstration, not a useful model.",
        training_data=f"the World English Bible sample embedded in hope_hf ({token_ids.numel():,} tokens, byte-level BPE "
                      f"of {len(tokenizer)} tokens trained on it)",
        results={"training loss, first step": first_loss, f"training loss, step {args.steps}": record["loss"]},
        license=args.license, model_name=args.hub_model_id or "hope-quickstart",
    )
    finish_model_folder(out / "model", card, push=args.push_to_hub, hub_model_id=args.hub_model_id or "hope-quickstart",
                        private=args.hub_private_repo)


if __name__ == "__main__":
    main()
