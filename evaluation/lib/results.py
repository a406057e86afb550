"""Result files: one JSON per experiment with one fixed header, written after every cell so that
a stopped job keeps what finished and a rerun with ``--resume`` runs only the missing cells.

Header (every results file, in this order)::

    command       every invocation that wrote the file, joined by " ; "
    versions      python, torch, transformers, accelerate, datasets, hope_hf
    machine       platform, processor, cpu_count, torch threads, device
    load_average  1, 5 and 15 min load average when the file was last written
    duration_s    wall-clock seconds of every invocation, summed
    settings      what the runner was asked to do (its arguments)

then the runner's own fields (summary, parameters, ...) and ``runs``, one dict per cell.

Runners write under ``outputs/`` by default; the committed numbers in ``evaluation/results/``
change only with ``--commit-results``.
"""

import json
import os
import platform
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

COMMITTED = Path(__file__).resolve().parents[1] / "results"
OUTPUTS = Path("outputs")
HEADER = ("command", "versions", "machine", "load_average", "duration_s", "settings")
PACKAGES = ("torch", "transformers", "accelerate", "datasets", "hope-hf")


def add_output_arguments(parser, name: str, resume: bool = True) -> None:
    """--output, --commit-results (and --resume) for a runner whose file is called ``name``."""
    parser.add_argument("--output", type=Path, default=None,
                        help=f"JSON path, the PNG beside it (default: outputs/{name}.json)")
    parser.add_argument("--commit-results", action="store_true",
                        help=f"write evaluation/results/{name}.json, the numbers the docs quote")
    if resume:
        parser.add_argument("--resume", action="store_true",
                            help="keep the runs already in the output and run only the missing cells")


def output_path(args, name: str) -> Path:
    if args.output is not None and args.commit_results:
        raise SystemExit("--output and --commit-results are exclusive: the committed file's path is fixed")
    if args.output is not None:
        return Path(args.output)
    return (COMMITTED if args.commit_results else OUTPUTS) / f"{name}.json"


def command_line(module: str, argv: list[str] | None) -> str:
    return f"python -m {module} " + shlex.join(sys.argv[1:] if argv is None else argv)


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def machine(device: str = "cpu") -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "device": device}


def jsonable(value):
    """Settings as JSON holds them (paths and tuples become strings and lists)."""
    return json.loads(json.dumps(value, default=str))


class ResultsFile:
    """The results of one runner invocation, resumable.

    ``settings`` (a dict) goes in the header. With ``resume`` and an existing file, its runs are
    kept: the settings must agree except for the keys in ``varying`` (the sweep's axes, which a
    resumed run may extend), its commands and durations carry on."""

    def __init__(self, path: Path, command: str, settings: dict, resume: bool = False, device: str = "cpu",
                 varying: tuple = ()):
        self.path = Path(path)
        self.command, self.device = command, device
        self.settings = jsonable(settings)
        self.started = time.time()
        self.earlier_duration = 0.0
        self.fields: dict = {}
        self.runs: list[dict] = []
        self.saved: dict | None = None  # what the file holds now
        if resume and self.path.exists():
            earlier = json.loads(self.path.read_text())
            mismatch = {k: (earlier["settings"].get(k), v) for k, v in self.settings.items()
                        if k not in varying and k not in ("resume", "output") and earlier["settings"].get(k) != v}
            if mismatch:
                raise SystemExit(f"--resume: {self.path} was made with other settings than asked now (model shape, data, "
                                 f"schedule); earlier and now: {mismatch}")
            self.command = f"{earlier['command']} ; {command}"
            self.earlier_duration = earlier["duration_s"]
            self.fields = {k: v for k, v in earlier.items() if k not in (*HEADER, "runs")}
            self.runs = earlier["runs"]

    def find(self, cell: dict) -> dict | None:
        """The recorded run with every key/value of ``cell``, or None."""
        cell = jsonable(cell)
        return next((run for run in self.runs if all(run.get(k) == v for k, v in cell.items())), None)

    def has(self, cell: dict) -> bool:
        return self.find(cell) is not None

    def run(self, cell: dict, run_cell: Callable[[dict], dict]) -> tuple[dict, bool]:
        """(the record of ``cell``, whether it ran now): ``run_cell(cell)`` runs and is recorded
        unless the file already holds the cell."""
        found = self.find(cell)
        if found is not None:
            return found, False
        self.add({**cell, **run_cell(cell)})
        return self.runs[-1], True

    def add(self, run: dict) -> None:
        """Record one cell's run and write the file."""
        self.runs.append(jsonable(run))
        self.save()

    def merge(self, other_path: Path, cell_of: Callable[[dict], tuple]) -> dict:
        """Add the runs of another results file (e.g. one written in parallel with its own --output)
        whose cells (``cell_of(run)``) this file lacks, with its command and duration; returns the
        other file's content (for the runner's own fields)."""
        other = json.loads(Path(other_path).read_text())
        known = {cell_of(r) for r in self.runs}
        self.runs += [r for r in other["runs"] if cell_of(r) not in known]
        earlier, now = self.command.rsplit(" ; ", 1)  # a resumed file: its commands, then this one
        self.command = " ; ".join([earlier, other["command"], now])
        self.earlier_duration += other["duration_s"]
        return other

    def payload(self) -> dict:
        """What the file holds: the header, the runner's fields, the runs."""
        return {"command": self.command, "versions": versions(), "machine": machine(self.device),
                "load_average": list(os.getloadavg()),
                "duration_s": self.earlier_duration + (time.time() - self.started),
                "settings": self.settings, **self.fields, "runs": self.runs}

    def save(self, **fields) -> Path:
        """Write the header, the runner's ``fields`` (kept from earlier calls) and the runs; ``saved``
        holds what was written."""
        self.fields.update(jsonable(fields))
        payload = self.saved = self.payload()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
        partial.replace(self.path)  # a kill mid-write leaves the previous file whole
        return self.path


def run_cells(results: ResultsFile, cells: list[dict], run_cell: Callable[[dict], dict],
              after: Callable[[ResultsFile], None] | None = None) -> list[dict]:
    """Run every cell not yet in ``results`` (in order), recording each as it ends; ``after``
    (e.g. a summary and a plot) runs after each. The file's ``complete`` says whether every cell
    asked for is in it. Returns the runs of the cells asked for."""
    results.save(complete=False)
    runs = []
    for cell in cells:
        run, ran = results.run(cell, run_cell)
        runs.append(run)
        if ran and after is not None:
            after(results)
    results.save(complete=True)  # every cell asked for is in the file
    return runs


__all__ = ["COMMITTED", "HEADER", "OUTPUTS", "ResultsFile", "add_output_arguments", "command_line", "jsonable",
           "machine", "output_path", "run_cells", "versions"]
