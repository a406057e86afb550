"""Figures of the experiments: matplotlib on a backend that needs no display, and one way to
save a figure beside its results file."""

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (runners plot on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 120, bbox_inches: str | None = "tight") -> Path:
    """Write ``fig`` to ``path`` (a results file's ``.with_suffix(".png")``) and close it."""
    fig.savefig(path, dpi=dpi, bbox_inches=bbox_inches)
    pyplot().close(fig)
    return Path(path)


__all__ = ["pyplot", "save_figure"]
