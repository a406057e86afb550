"""Absolute paths of the data files of the local tasks, so they load from any working directory.

lm-eval passes `dataset_kwargs: {data_files: ...}` to `datasets.load_dataset`, which resolves a
relative path against the CURRENT directory, not the YAML's. The YAMLs therefore name these
constants with lm-eval's `!function module.name` tag, which lm-eval resolves by importing
`module.py` from the YAML's own folder and returning `module.name` (a string here). Rebuild the
files with `python -m evaluation.build_local_tasks`.
"""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
PPL_EN = str(DATA_DIR / "ppl_en.jsonl")
PPL_ES = str(DATA_DIR / "ppl_es.jsonl")
LAMBADA_EN = str(DATA_DIR / "lambada_en.jsonl")
