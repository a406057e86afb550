"""Figures of the experiments: matplotlib on a backend that needs no display, one way to save a
figure beside its results file, and curves coloured by name."""

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (runners plot on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 120, bbox_inches: str | None = "tight") -> Path:
    """Write ``fig`` as the PNG beside ``path`` (a results file, or the PNG's own path) and close it."""
    png = Path(path).with_suffix(".png")
    fig.savefig(png, dpi=dpi, bbox_inches=bbox_inches)
    pyplot().close(fig)
    return png


def plot_curves(runs: list[dict], label_key: str, x_key: str, y_key: str, path: Path, *, xlabel: str, ylabel: str,
                title: str, x_scale: float = 1.0, curve_key: str = "curve") -> Path:
    """One line per run through its ``curve`` points (x / x_scale, y), coloured by ``run[label_key]``,
    each label in the legend once."""
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    colors = {}
    for run in runs:
        label = run[label_key]
        first = label not in colors
        colors.setdefault(label, f"C{len(colors) % 10}")
        points = [p for p in run[curve_key] if p[x_key] > 0]
        ax.plot([p[x_key] / x_scale for p in points], [p[y_key] for p in points], color=colors[label], alpha=0.85,
                label=label if first else None)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path, dpi=110)


__all__ = ["plot_curves", "pyplot", "save_figure"]
