"""lm-evaluation-harness with hope_hf imported: the stock `lm_eval` command line, unchanged.

    hope-lm-eval --model hf --model_args pretrained=DIR --tasks hope_local --limit 20
    python -m hope_hf.evaluation.lm_eval_entry --model hf --model_args pretrained=DIR,trust_remote_code=True --tasks hellaswag

Every argument and subcommand (`run`, `ls`, `validate`) is lm-eval's own. Two differences:
* `import hope_hf` runs first, so model_type "hope" and "llama_cms" load through the Auto classes
  without `trust_remote_code` (with it, the checkpoint's own code copy is used, as with `lm_eval`);
* the local tasks shipped in this package (hope_hf/evaluation/tasks/: hope_local_ppl_en,
  hope_local_ppl_es, hope_local_lambada_en, tag hope_local) are on the task path: lm-eval's
  `--include_path` gets them when it is not given, and a given one is searched after them (its
  tasks win on a name clash).
"""

import json
import logging
import math
import sys
from pathlib import Path

import hope_hf  # noqa: F401  (registers HopeConfig / LlamaCMSConfig with the Auto classes)

LOCAL_TASKS_DIR = Path(__file__).resolve().parent / "tasks"  # package data
PROG = "hope-lm-eval"

logger = logging.getLogger(__name__)


def with_local_tasks(include_path, local_dir: Path = LOCAL_TASKS_DIR):
    """The --include_path value that adds local_dir to what the user gave (None, a path or a list)."""
    if not local_dir.is_dir():
        logger.warning("local tasks not found at %s: only lm-eval's tasks", local_dir)
        return include_path
    if include_path is None:
        return str(local_dir)
    given = list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
    return [str(local_dir), *given]  # TaskManager: later paths override earlier ones


def parse_args(argv: list[str]):
    """lm-eval's own parser and its legacy rule (no subcommand means `run`) on argv."""
    from lm_eval._cli import HarnessCLI

    saved = sys.argv
    sys.argv = [PROG, *argv]
    try:
        cli = HarnessCLI()
        args = cli.parse_args()
    finally:
        sys.argv = saved
    if hasattr(args, "include_path"):
        args.include_path = with_local_tasks(args.include_path)
    return cli, args


def main(argv: list[str] | None = None) -> None:
    """Run lm-eval's CLI on argv (default: sys.argv[1:]) with hope_hf imported and local tasks added."""
    from lm_eval.utils import setup_logging

    setup_logging()
    cli, args = parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        cli.execute(args)
    except ValueError as error:
        if not str(error).startswith("Tasks not found"):
            raise
        sys.exit(f"{PROG}: error: {error}. List the available tasks with `{PROG} ls tasks` "
                 f"(local tasks: {LOCAL_TASKS_DIR}).")


def results_file(output_path) -> Path:
    """The newest results_*.json that lm-eval wrote under --output_path (a folder or the file)."""
    output_path = Path(output_path)
    if output_path.is_file():
        return output_path
    found = sorted(output_path.glob("**/results_*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no results_*.json under output_path {str(output_path)!r}")
    return found[-1]


def summarize(results: dict) -> list[dict]:
    """lm-eval's results JSON as rows {task, metric, value, stderr, samples} (filter "none" only)."""
    rows = []
    for task, metrics in sorted(results["results"].items()):
        samples = results.get("n-samples", {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if filter_name != "none" or metric.endswith("_stderr"):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            stderr = stderr if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
            rows.append({"task": task, "metric": metric, "value": value, "stderr": stderr, "samples": samples})
    return rows


def load_summary(output_path) -> list[dict]:
    """summarize() of the newest results file under output_path."""
    return summarize(json.loads(results_file(output_path).read_text(encoding="utf-8")))


if __name__ == "__main__":
    main()
