"""Pictures of the experiments: matplotlib without a display, one colour per name."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(runs: list[dict], label_key: str, x_key: str, y_key: str, path: Path, *, xlabel: str, ylabel: str,
                title: str, x_scale: float = 1.0, curve_key: str = "curve") -> None:
    """One line per run through its ``curve`` points (x / x_scale, y), coloured by ``run[label_key]``,
    each label in the legend once."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
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
    save(fig, path)


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["plot_curves", "plt", "save"]
