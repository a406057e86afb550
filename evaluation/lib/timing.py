"""What the speed benchmarks (``evaluation.benchmarks``) share: the interleaved timer, their
parser's common options and the start of a run, and their results file.

Every side of a comparison runs in one process, interleaved (A, B, A, B, ...), and the median of
the repeats is reported: these machines are shared and noisy, so only ratios taken this way are
meaningful. Oversubscribed cores (load average well above the core count) hurt the many small
ops of the chunked memory far more than attention's few large ones, so a run under load
understates Hope; the results header records the load average for that reason.
"""

import argparse
import statistics
import time

import torch
from tqdm import tqdm

from .results import ResultsFile, add_output_arguments, command_line, output_path


def time_interleaved(fns: dict, repeats: int, warmup: int = 1, desc: str = "timing") -> dict[str, dict]:
    """Run every fn() once per repeat, alternating between them; returns
    {name: {"median_s", "min_s", "all_s"}}."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in tqdm(range(repeats), desc=desc, leave=False):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "all_s": t} for name, t in times.items()}


def benchmark_parser(doc: str, name: str, threads: int | None = 2, repeats: int | None = None,
                     resume: bool = False) -> argparse.ArgumentParser:
    """A benchmark's parser: its docstring as help, --threads and --repeats (where given a
    default), and --output / --commit-results (--resume) for the results file called ``name``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if threads is not None:
        parser.add_argument("--threads", type=int, default=threads, help="torch threads")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats, help="timed repeats of every side (median kept)")
    add_output_arguments(parser, name, resume=resume)
    return parser


def start(parser: argparse.ArgumentParser, argv: list[str] | None, seed: int | None = 0) -> argparse.Namespace:
    """Parse the arguments, set torch's threads (--threads) and seed."""
    args = parser.parse_args(argv)
    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(args.threads)
    if seed is not None:
        torch.manual_seed(seed)
    return args


def results_file(args, module: str, argv: list[str] | None, name: str, device: str = "cpu",
                 resume: bool = False) -> ResultsFile:
    """The ResultsFile at ``output_path(args, name)``, the command ``python -m module argv``,
    the arguments as its settings."""
    return ResultsFile(output_path(args, name), command_line(module, argv), settings=vars(args), device=device,
                       resume=resume)


__all__ = ["benchmark_parser", "results_file", "start", "time_interleaved"]
