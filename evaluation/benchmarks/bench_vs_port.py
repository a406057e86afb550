"""hope_hf against the public Hope port (github.com/kmccleary3301/nested_learning), side by side.

The port is not part of this repository: fetch it yourself and pass its folder with --port-path;
without it the script says so and exits. Its models are built from its own pilot configs
(configs/pilot.yaml with configs/hope/pilot_selfmod.yaml or pilot_attention.yaml on top, as its
Hydra defaults list them) at a small size (--dim/--layers/--heads/--vocab-size, default 128 / 2 / 4
/ 256; --pilot-size keeps the configs' own 512 / 12 / 8 / 32000). hope_hf gets the same size, the
port's CMS levels (4 x dim GELU MLPs -> SwiGLU of equal parameter count, the same periods), tied
embeddings, and the titans chunk of the port's memory (self_mod_chunk_size_memory).

Pairs: hope_hf titans vs the port's hope_selfmod; hope_hf attention vs the port's hope_attention.
Timed, both sides in one process, interleaved, medians, fp32, batch --batch:

* train: one step of forward + backward + AdamW on the next-token loss (the port: ``model(ids)``,
  whose forward only reads its memories);
* forward: the same forward without grad;
* port_pilot_step: the port's training step as its pilot config runs it (train.online_updates with
  online_chunk_size 0 = the smallest CMS period, per_layer_teach_signal): per chunk a read pass,
  the loss, per-layer teach signals, backward, and a no-grad update pass that writes the memories;
  then AdamW. Compared with hope_hf's train step (whose forward writes its memory in context);
* mixer_fwd_bwd (titans only): forward + backward of layer 0's sequence mixer alone, the same input
  (hope_hf's titans memory vs the port's SelfModifyingTitans read pass);
* reach: how much the last position's logits move when only the first of 64 tokens changes (the
  port's hope_selfmod read pass mixes tokens only through its causal convolutions);
* reading with test-time learning: hope_hf's InContextLearner (segment --segment-size) vs the port's
  online mode on a fresh fast state (per segment: read pass, loss, per-layer teach signals, update
  pass), the same segment.

    python -m evaluation.benchmarks.bench_vs_port --port-path /path/to/nested_learning   # ~2 minutes, 1 thread
Writes outputs/bench_vs_port.json and .png (--commit-results: evaluation/results/).
"""

import dataclasses
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.timing import benchmark_parser, results_file, start, time_interleaved
from hope_hf import HopeConfig, HopeForCausalLM, InContextLearner

PAIRS = {"titans": "pilot_selfmod", "attention": "pilot_attention"}  # hope_hf mixer -> the port's config
PORT_MODEL_FILE = Path("src") / "nested_learning" / "model.py"
SHORT_NAMES = {"train": "train", "forward": "forward", "mixer_fwd_bwd": "mixer\nfwd+bwd",
               "train_vs_port_pilot_step": "train vs\npilot step",
               "read_with_test_time_learning": "reading,\ntest-time"}


def port_missing_reason(port_path) -> str | None:
    if port_path is None:
        return "no --port-path given"
    if not (Path(port_path) / PORT_MODEL_FILE).is_file():
        return f"{Path(port_path) / PORT_MODEL_FILE} not found"
    return None


def read_port_config(port_path: Path, variant: str) -> dict:
    """The port's pilot config for one variant: pilot.yaml, then the variant's own keys on top."""
    merged = yaml.safe_load((port_path / "configs" / "pilot.yaml").read_text())
    override = yaml.safe_load((port_path / "configs" / "hope" / f"{variant}.yaml").read_text())
    for section, values in override.items():
        if section != "defaults":
            merged[section] = {**merged.get(section, {}), **values}
    return merged


def resize(model_section: dict, args) -> dict:
    if args.pilot_size:
        return dict(model_section)
    return {**model_section, "dim": args.dim, "num_layers": args.layers, "heads": args.heads,
            "vocab_size": args.vocab_size}


def hope_config_like(model_section: dict, mixer: str, max_len: int) -> HopeConfig:
    """hope_hf at the port's shape: its CMS periods, 4 x dim GELU MLPs as SwiGLU of equal size."""
    dim = model_section["dim"]
    swiglu_size = round(2 * 4 * dim / 3)  # 3 * dim * i weights = the port's 2 * dim * 4 dim
    levels = [{"intermediate_size": swiglu_size, "update_period": level["update_period"]}
              for level in model_section["cms_levels"]]
    return HopeConfig(
        vocab_size=model_section["vocab_size"], hidden_size=dim, num_hidden_layers=model_section["num_layers"],
        num_attention_heads=model_section["heads"], mixer=mixer, cms_levels=levels, tie_word_embeddings=True,
        titans_chunk_size=model_section.get("self_mod_chunk_size_memory") or 64, max_position_embeddings=max_len,
    )


def import_port(port_path: Path):
    sys.path.insert(0, str(port_path / "src"))
    from nested_learning.levels import LevelSpec
    from nested_learning.model import HOPEModel, ModelConfig
    return HOPEModel, ModelConfig, LevelSpec


def build_port_model(port_path: Path, model_section: dict):
    """The port's HOPEModel from its config keys; returns the model and the keys it does not read."""
    HOPEModel, ModelConfig, LevelSpec = import_port(port_path)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    kwargs = {key: value for key, value in model_section.items() if key in known}
    kwargs["titan_level"] = LevelSpec(**kwargs["titan_level"])
    kwargs["cms_levels"] = [LevelSpec(**level) for level in kwargs["cms_levels"]]
    return HOPEModel(ModelConfig(**kwargs)), sorted(set(model_section) - known)


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights count once


def next_token_loss(logits, ids):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def train_step(model, ids, is_port: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = next_token_loss(model(ids), ids) if is_port else model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def forward(model, ids, is_port: bool):
    def run():
        with torch.no_grad():
            model(ids) if is_port else model(ids, use_cache=False)

    return run


def mixer_fwd_bwd(module, x):
    def run():
        module(x).sum().backward()

    return run


def reach_of_first_token(model, vocab: int, is_port: bool, seq_len: int = 64) -> float:
    """Max change of the last position's logits when only the first token changes (0: out of reach)."""
    ids = torch.randint(0, vocab, (1, seq_len))
    other = ids.clone()
    other[0, 0] = (ids[0, 0] + 1) % vocab
    with torch.no_grad():
        logits = [model(x) if is_port else model(x, use_cache=False).logits for x in (ids, other)]
    return (logits[0][0, -1] - logits[1][0, -1]).abs().max().item()


def port_chunk_update(model, chunk, fast_state=None, outer_backward=False, finalize=True):
    """One chunk of the port's online mode: read pass, loss, per-layer teach signals, update pass.
    A chunk of one token has no next-token target and is skipped, as the port's loop does."""
    if chunk.shape[1] < 2:
        return
    logits, _pre_norm, block_outputs = model.forward_with_block_outputs(chunk, fast_state=fast_state)
    loss = next_token_loss(logits, chunk)
    teach_signals = [g.detach() for g in torch.autograd.grad(loss, block_outputs, retain_graph=outer_backward)]
    if outer_backward:
        loss.backward()
    with torch.no_grad():
        model(chunk, teach_signals=teach_signals, fast_state=fast_state, finalize_updates=finalize)


def port_pilot_step(model, ids, train_section: dict):
    """The port's training step with its pilot settings: online chunks overlapping by one token."""
    assert train_section.get("online_updates") and train_section.get("per_layer_teach_signal")
    smallest_period = min(level.update_period for level in model.blocks[0].config.cms_levels)
    chunk_size = train_section.get("online_chunk_size") or smallest_period
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    seq_len = ids.shape[1]

    def step():
        for offset in range(0, seq_len, chunk_size):
            chunk = ids[:, max(offset - 1, 0): offset + chunk_size]
            port_chunk_update(model, chunk, outer_backward=True, finalize=offset + chunk_size >= seq_len)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, chunk_size


def port_online_read(model, ids, segment_size: int):
    """The port's test-time mode: a fresh fast state learns from each segment in turn."""
    def read():
        fast_state = model.init_fast_state()
        for offset in range(0, ids.shape[1], segment_size):
            port_chunk_update(model, ids[:, offset: offset + segment_size], fast_state=fast_state,
                              finalize=offset + segment_size >= ids.shape[1])

    return read


def summarize(timings: dict, tokens: int) -> dict:
    return {name: {"tokens_per_s": tokens / t["median_s"], "median_s": t["median_s"], "all_s": t["all_s"]}
            for name, t in timings.items()}


def compare(fns: dict, tokens: int, repeats: int, warmup: int, desc: str) -> dict:
    timings = summarize(time_interleaved(fns, repeats=repeats, warmup=warmup, desc=desc), tokens)
    hope, port = timings["hope_hf"], timings["port"]
    return {"hope_hf_over_port": hope["tokens_per_s"] / port["tokens_per_s"], **timings}


def run_pair(mixer: str, variant: str, args) -> dict:
    config = read_port_config(args.port_path, variant)
    model_section = resize(config["model"], args)
    torch.manual_seed(args.seed)
    port, ignored = build_port_model(args.port_path, model_section)
    hope = HopeForCausalLM(hope_config_like(model_section, mixer, max(args.seq_lens + [args.read_len])))
    port.train(), hope.train()
    vocab = model_section["vocab_size"]
    result = {"port_config": variant, "hope_hf_mixer": mixer, "port_model_section": model_section,
              "port_keys_not_read": ignored, "hope_hf_config": hope.config.to_dict(),
              "parameters": {"hope_hf": num_params(hope), "port": num_params(port)}, "rows": []}
    result["last_logits_change_when_token_0_changes_L64"] = {
        "hope_hf": reach_of_first_token(hope, vocab, False), "port": reach_of_first_token(port, vocab, True)}
    print(f"{mixer} vs {variant}: parameters hope_hf {num_params(hope):,}, port {num_params(port):,}")
    for seq_len in args.seq_lens:
        ids = torch.randint(0, vocab, (args.batch, seq_len))
        tokens = args.batch * seq_len
        for kind, make in (("train", train_step), ("forward", forward)):
            row = {"kind": kind, "seq_len": seq_len, "batch": args.batch,
                   **compare({"hope_hf": make(hope, ids, False), "port": make(port, ids, True)}, tokens,
                             args.repeats, 1, f"{mixer} {kind} L={seq_len}")}
            result["rows"].append(row)
            print(f"  {kind:8s} L={seq_len}: hope_hf {row['hope_hf']['tokens_per_s']:.0f} tok/s, "
                  f"port {row['port']['tokens_per_s']:.0f} tok/s, ratio {row['hope_hf_over_port']:.2f}")
        if mixer == "titans":  # the sequence mixers alone: hope_hf's titans memory vs the port's read pass
            x = torch.randn(args.batch, seq_len, model_section["dim"], requires_grad=True)
            fns = {"hope_hf": mixer_fwd_bwd(hope.model.layers[0].mixer, x),
                   "port": mixer_fwd_bwd(port.blocks[0].selfmod, x)}
            row = {"kind": "mixer_fwd_bwd", "seq_len": seq_len, "batch": args.batch,
                   **compare(fns, tokens, args.repeats, 1, f"mixers L={seq_len}")}
            result["rows"].append(row)
            print(f"  mixer fwd+bwd L={seq_len}: hope_hf {row['hope_hf']['median_s'] * 1e3:.1f} ms, "
                  f"port {row['port']['median_s'] * 1e3:.1f} ms")

    ids = torch.randint(0, vocab, (args.batch, args.read_len))
    tokens = args.batch * args.read_len
    pilot_step, chunk = port_pilot_step(port, ids, config["train"])
    hope_step = train_step(hope, ids, False)
    hope_step()  # warm-up; the port's side runs without one (one repeat takes seconds of already warm small calls)
    row = {"kind": "train_vs_port_pilot_step", "seq_len": args.read_len, "batch": args.batch,
           "port_online_chunk_size": chunk,
           **compare({"hope_hf": hope_step, "port": pilot_step}, tokens, args.slow_repeats, 0,
                     f"{mixer} pilot step")}
    result["rows"].append(row)
    learner = InContextLearner(hope.eval(), lr=1e-3, segment_size=args.segment_size)
    learner.read(ids)  # warm-up, as above
    port.eval()
    row2 = {"kind": "read_with_test_time_learning", "seq_len": args.read_len, "batch": args.batch,
            "segment_size": args.segment_size,
            **compare({"hope_hf": lambda: learner.read(ids), "port": port_online_read(port, ids, args.segment_size)},
                      tokens, args.slow_repeats, 0, f"{mixer} reading")}
    result["rows"].append(row2)
    for r in (row, row2):
        print(f"  {r['kind']} L={args.read_len}: hope_hf {r['hope_hf']['tokens_per_s']:.0f} tok/s, "
              f"port {r['port']['tokens_per_s']:.1f} tok/s, ratio {r['hope_hf_over_port']:.1f}")
    return result


def port_commit(port_path: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(port_path), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def plot(pairs: list[dict], json_path: Path):
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels, ratios, colors = [], [], []
    for pair, color in zip(pairs, ("tab:blue", "tab:orange")):
        for row in pair["rows"]:
            labels.append(f"{pair['hope_hf_mixer']}\n{SHORT_NAMES[row['kind']]}\nL={row['seq_len']}")
            ratios.append(row["hope_hf_over_port"])
            colors.append(color)
    bars = ax.bar(range(len(ratios)), ratios, color=colors)
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(1.5, color="gray", linestyle="--", linewidth=0.8, label="goal for titans training (1.5x, docs/benchmarks.md)")
    ax.set_xticks(range(len(ratios)), labels, fontsize=7)
    ax.set_ylabel("tokens/s, hope_hf / port (log)")
    ax.set_title("hope_hf vs the port: titans vs hope_selfmod (blue), attention vs hope_attention (orange)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save_figure(fig, json_path)


def main(argv=None):
    parser = benchmark_parser(__doc__, "bench_vs_port", threads=1, repeats=5)
    parser.add_argument("--port-path", type=Path, default=None, help="a checkout of kmccleary3301/nested_learning")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=256)
    parser.add_argument("--pilot-size", action="store_true", help="keep the configs' own size (512 / 12 / 8 / 32000)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--read-len", type=int, default=256, help="length of the pilot-step and reading comparisons")
    parser.add_argument("--segment-size", type=int, default=64)
    parser.add_argument("--slow-repeats", type=int, default=2, help="repeats of the pilot-step and reading comparisons")
    parser.add_argument("--seed", type=int, default=0)
    args = start(parser, argv, seed=None)
    missing = port_missing_reason(args.port_path)
    if missing:
        print(f"skipped: the port's source is needed ({missing}). Fetch it with\n"
              "    git clone https://github.com/kmccleary3301/nested_learning\n"
              "and pass --port-path nested_learning. Nothing was measured or written.")
        return None
    args.port_path = args.port_path.resolve()
    results = results_file(args, __spec__.name, argv, "bench_vs_port")
    pairs = [run_pair(mixer, variant, args) for mixer, variant in PAIRS.items()]
    path = results.save(port_commit=port_commit(args.port_path), dtype="float32",
                        optimizer="AdamW lr 1e-4 on both sides (the port's pilot uses Muon)", pairs=pairs)
    print(f"wrote {path}")
    plot(pairs, path)
    return path


if __name__ == "__main__":
    main()
