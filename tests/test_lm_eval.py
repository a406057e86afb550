"""lm-evaluation-harness: the stock `lm_eval` CLI and our entry point (`hope-lm-eval`,
`python -m hope_hf.evaluation.lm_eval_entry`) end to end on saved tiny Hope and Llama-CMS
checkpoints, on the offline local tasks (hope_hf/evaluation/tasks, package data), from a working
directory outside the repository. The lm-eval runs are started together in the background (each spends ~20 s indexing
lm-eval's 14k task YAMLs) and each test waits for the one it checks."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import SESSION_SEED
from helpers import tiny_model
from hope_hf import LlamaCMSForCausalLM
from hope_hf.evaluation import lm_eval_entry
from hope_hf.training.tokenizer import train_bpe_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = ROOT / "hope_hf" / "evaluation" / "tasks"  # package data
BIN = Path(sys.executable).parent
LIMIT = 2
LOCAL_TASKS = {
    "hope_local_lambada_en": {"acc", "perplexity"},
    "hope_local_ppl_en": {"word_perplexity", "byte_perplexity", "bits_per_byte"},
    "hope_local_ppl_es": {"word_perplexity", "byte_perplexity", "bits_per_byte"},
}
UNKNOWN_TASK = "no_such_task_xyz"


class Run:
    """One lm-eval command in the background, its output in files (no pipe to fill up)."""

    def __init__(self, name: str, command: list[str], workdir: Path):
        self.name, self.command, self.output_dir = name, command, workdir / f"results_{name}"
        self.log = workdir / f"{name}.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "HF_MODULES_CACHE": str(workdir / "hf_modules" / name), "HF_DATASETS_CACHE": str(workdir / "datasets" / name)}
        self.missing = None if Path(command[0]).exists() else f"{command[0]} does not exist (pip install -e . ?)"
        self.process = None
        if self.missing is None:
            with open(self.log, "w") as log:
                self.process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait(self) -> tuple[int, str]:
        """(exit code, output) once the command has finished."""
        assert self.missing is None, self.missing
        returncode = self.process.wait(timeout=600)
        return returncode, self.log.read_text(errors="replace")

    def results(self) -> dict:
        """lm-eval's results JSON of a run that must have succeeded."""
        returncode, output = self.wait()
        assert returncode == 0, f"{self.name} failed ({returncode}): {' '.join(self.command)}\n{output[-4000:]}"
        return json.loads(lm_eval_entry.results_file(self.output_dir).read_text())


def tokenizer_for_local_tasks():
    """A byte-level BPE trained on the local tasks' own text, so it covers every character."""
    texts = [json.loads(line)["text"] for f in sorted((TASKS_DIR / "data").glob("*.jsonl")) for line in f.open()]
    return train_bpe_tokenizer(texts, vocab_size=384)


def save_checkpoints(folder: Path) -> dict[str, Path]:
    """A tiny titans Hope and a tiny Llama-CMS, each saved with the tokenizer."""
    torch.manual_seed(SESSION_SEED)
    tokenizer = tokenizer_for_local_tasks()
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, max_position_embeddings=1024, **ids))
    models = {
        "hope": tiny_model(mixer="titans", titans_chunk_size=16, **ids),
        "llama_cms": LlamaCMSForCausalLM.from_llama(llama, cms_levels=[{"name": "fast", "intermediate_size": 16, "update_period": 1}]),
    }
    paths = {}
    for name, model in models.items():
        paths[name] = folder / name
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def lm_eval_args(checkpoint: Path, model_args: str = "", tasks: str = "hope_local") -> list[str]:
    return ["--model", "hf", "--model_args", f"pretrained={checkpoint}{model_args}", "--tasks", tasks,
            "--limit", str(LIMIT), "--device", "cpu", "--batch_size", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lm_eval")
    ckpt = save_checkpoints(workdir)
    stock, include = [str(BIN / "lm_eval")], ["--include_path", str(TASKS_DIR)]
    commands = {
        "stock_hope": stock + lm_eval_args(ckpt["hope"], ",trust_remote_code=True") + include,
        "stock_llama_cms": stock + lm_eval_args(ckpt["llama_cms"], ",trust_remote_code=True") + include,
        # ours: no --include_path, no trust_remote_code (hope_hf's own classes)
        "ours_hope": [sys.executable, "-m", "hope_hf.evaluation.lm_eval_entry"] + lm_eval_args(ckpt["hope"]),
        "ours_unknown": [str(BIN / "hope-lm-eval")] + lm_eval_args(ckpt["hope"], tasks=f"hope_local_ppl_en,{UNKNOWN_TASK}"),
    }
    started = {}
    for name, command in commands.items():
        output = ["--output_path", str(workdir / f"results_{name}")] if name != "ours_unknown" else []
        started[name] = Run(name, command + output, workdir)
    yield started
    for run in started.values():
        if run.process is not None and run.process.poll() is None:
            run.process.kill()


def check_local_task_results(results: dict) -> dict[tuple[str, str], float]:
    """Every local task ran on LIMIT documents with finite metrics; {(task, metric): value}."""
    rows = lm_eval_entry.summarize(results)
    values = {(row["task"], row["metric"]): row["value"] for row in rows}
    for task, metrics in LOCAL_TASKS.items():
        assert {m for t, m in values if t == task} == metrics, (task, values)
        assert results["n-samples"][task]["effective"] == LIMIT
    for (task, metric), value in values.items():
        assert isinstance(value, float) and math.isfinite(value), (task, metric, value)
        assert 0 <= value <= 1 if metric == "acc" else value > 0, (task, metric, value)
    for task in ("hope_local_ppl_en", "hope_local_ppl_es"):  # two views of one log-likelihood
        assert values[task, "byte_perplexity"] == pytest.approx(2 ** values[task, "bits_per_byte"], rel=1e-9)
    return values


@pytest.mark.parametrize("name", ["stock_hope", "stock_llama_cms"])
def test_stock_lm_eval_cli_runs_the_local_tasks(runs, name):
    results = runs[name].results()
    check_local_task_results(results)
    data_files = results["configs"]["hope_local_ppl_es"]["dataset_kwargs"]["data_files"]["test"]
    assert Path(data_files).is_absolute() and Path(data_files) == TASKS_DIR / "data" / "ppl_es.jsonl"


def test_entry_point_gives_the_stock_numbers_without_include_path_or_remote_code(runs):
    ours = check_local_task_results(runs["ours_hope"].results())
    stock = check_local_task_results(runs["stock_hope"].results())
    assert ours.keys() == stock.keys()
    for key, value in stock.items():
        assert ours[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    other = check_local_task_results(runs["stock_llama_cms"].results())
    assert other["hope_local_ppl_en", "bits_per_byte"] != stock["hope_local_ppl_en", "bits_per_byte"]


def test_unknown_task_is_a_clear_error(runs):
    returncode, output = runs["ours_unknown"].wait()
    assert returncode != 0
    last_line = output.strip().splitlines()[-1]
    assert "Tasks not found" in last_line and UNKNOWN_TASK in last_line and "hope_local_ppl_en" not in last_line, output[-2000:]
    assert "Traceback" not in output


def test_entry_point_parses_exactly_lm_evals_arguments(monkeypatch):
    from lm_eval._cli import HarnessCLI

    argv = ["--model", "hf", "--model_args", "pretrained=ckpt,trust_remote_code=True", "--tasks", "a,b", "--limit", "3",
            "--batch_size", "2", "--output_path", "out", "--log_samples", "--seed", "7", "--num_fewshot", "0"]
    monkeypatch.setattr(sys, "argv", ["lm_eval", *argv])
    expected = vars(HarnessCLI().parse_args())
    _, ours = lm_eval_entry.parse_args(argv)
    ours = vars(ours)
    assert ours.pop("include_path") == str(TASKS_DIR) and expected.pop("include_path") is None
    assert {k: v for k, v in ours.items() if k != "func"} == {k: v for k, v in expected.items() if k != "func"}
    _, given = lm_eval_entry.parse_args(["ls", "tasks", "--include_path", "mine"])
    assert given.include_path == [str(TASKS_DIR), "mine"]  # the user's tasks win a name clash
    with pytest.raises(SystemExit):
        lm_eval_entry.parse_args(["run", "--no_such_option", "1"])


def test_local_tasks_are_package_data():
    """The entry point finds the tasks inside the package, and setup.py ships every file of them."""
    import ast

    assert lm_eval_entry.LOCAL_TASKS_DIR == TASKS_DIR
    setup = ast.parse((ROOT / "setup.py").read_text())
    [package_data] = [k.value for node in ast.walk(setup) if isinstance(node, ast.Call) for k in node.keywords
                      if k.arg == "package_data"]
    globs = ast.literal_eval(package_data)["hope_hf.evaluation.tasks"]
    files = [p.relative_to(TASKS_DIR) for p in TASKS_DIR.rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert {p.suffix for p in files} == {".yaml", ".jsonl"} and len(files) == 6
    for path in files:
        assert any(path.match(glob) for glob in globs), path


def test_build_local_tasks_is_deterministic_and_matches_the_committed_data(tmp_path):
    from evaluation import build_local_tasks as builder
    counts = builder.build(tmp_path / "a")
    builder.build(tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(counts) == ["lambada_en.jsonl", "ppl_en.jsonl", "ppl_es.jsonl"]
    for name in names:
        fresh = (tmp_path / "a" / name).read_bytes()
        assert fresh == (tmp_path / "b" / name).read_bytes(), name
        assert fresh == (TASKS_DIR / "data" / name).read_bytes(), f"{name}: rerun python -m evaluation.build_local_tasks"
    assert sum((TASKS_DIR / "data" / n).stat().st_size for n in names) < 300_000
    for line in (tmp_path / "a" / "lambada_en.jsonl").read_text().splitlines():
        context, target = json.loads(line)["text"].rsplit(" ", 1)
        assert target.isalpha() and target in re.findall(r"[A-Za-z]+", context), line
