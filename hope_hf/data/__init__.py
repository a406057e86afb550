"""Text shipped with the package, so the default jobs run offline.

web_en_sample.txt: the first ~300 KB of the World English Bible (public domain), one chapter
per line.
"""

from pathlib import Path

DATA_DIR = Path(__file__).parent


def sample_text_path(name: str = "web_en_sample") -> Path:
    path = DATA_DIR / f"{name}.txt"
    if not path.exists():
        available = sorted(p.stem for p in DATA_DIR.glob("*.txt"))
        raise ValueError(f"name must be one of {available}, got {name!r}")
    return path
