"""What the reliability checks cost (docs/reliability.md): the input checks of HopeModel.forward
and the non-finite-loss flag against one training step (forward + backward) of the same batch,
and hashing a checkpoint's files against writing them. All sides interleaved in one process.

    python -m evaluation.benchmarks.bench_reliability      # writes outputs/bench_reliability.json
"""

import tempfile
from pathlib import Path

import torch

from evaluation.lib.timing import benchmark_parser, results_file, start, time_interleaved
from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.modeling.modeling_hope import check_model_inputs, check_token_ids
from hope_hf.training.trainer import checkpoint_files

SHAPES = {  # scripts/train.py's preset "tiny", and a wider, deeper one
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                 cms_levels=[{"intermediate_size": 256, "update_period": 1}, {"intermediate_size": 128, "update_period": 8}]),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                  cms_levels=[{"intermediate_size": 512, "update_period": 1}, {"intermediate_size": 256, "update_period": 8}]),
}


def measure(shape: dict, batch_size: int, length: int, repeats: int) -> dict:
    model = HopeForCausalLM(HopeConfig(vocab_size=4096, **shape))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 4096, (batch_size, length))
    flag = torch.zeros((), dtype=torch.bool)

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def checks():  # what forward and the loss add: ids, labels, mask shapes
        check_model_inputs(model.config, ids, None, None, 0)
        check_token_ids("labels", ids, model.config.vocab_size, ignore_index=-100)

    def nonfinite():
        nonlocal flag
        flag |= ~torch.isfinite(torch.tensor(1.0))

    times = time_interleaved({"step": step, "checks": checks, "nonfinite_flag": nonfinite}, repeats, desc="step")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder)
        write = lambda: torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path / "state.bin")
        write()
        saving = time_interleaved({"write": write, "hash": lambda: checkpoint_files(path)}, repeats, desc="save")
    step_s = times["step"]["median_s"]
    return {"parameters": sum(p.numel() for p in model.parameters()), "batch": [batch_size, length],
            "step_s": step_s, "checks_s": times["checks"]["median_s"], "nonfinite_flag_s": times["nonfinite_flag"]["median_s"],
            "checks_vs_step": times["checks"]["median_s"] / step_s,
            "nonfinite_flag_vs_step": times["nonfinite_flag"]["median_s"] / step_s,
            "write_checkpoint_s": saving["write"]["median_s"], "hash_checkpoint_s": saving["hash"]["median_s"],
            "hash_vs_write": saving["hash"]["median_s"] / saving["write"]["median_s"]}


def main(argv=None) -> dict:
    parser = benchmark_parser(__doc__, "bench_reliability", threads=1, repeats=15)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    args = start(parser, argv)
    results = results_file(args, "evaluation.benchmarks.bench_reliability", argv, "bench_reliability")
    for name, shape in SHAPES.items():
        run = {"shape": name, **measure(shape, args.batch_size, args.length, args.repeats)}
        results.add(run)
        print(f"{name}: step {run['step_s'] * 1e3:.1f} ms; checks {100 * run['checks_vs_step']:.3f}% of it, "
              f"non-finite flag {100 * run['nonfinite_flag_vs_step']:.4f}%; hashing a checkpoint "
              f"{100 * run['hash_vs_write']:.0f}% of writing it")
    return results.saved


if __name__ == "__main__":
    main()
