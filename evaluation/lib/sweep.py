"""Sweeps: the cells of a grid, the spread of a metric over seeds, and the best setting of each
group chosen on one metric (a validation metric; the test metric of the chosen row is reported)."""

import itertools
import math
import statistics


def grid(**axes) -> list[dict]:
    """Every combination of the axes' values, the first axis slowest: grid(seed=[0, 1], lr=[1e-3])."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


def spread(values: list[float]) -> dict:
    """mean, min, max and sample std over seeds; a run that diverged (NaN/inf) makes the mean NaN."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    complete = len(finite) == len(values) and values
    return {"values": values, "mean": statistics.mean(finite) if complete else float("nan"),
            "min": min(finite, default=float("nan")), "max": max(finite, default=float("nan")),
            "std": statistics.stdev(finite) if complete and len(finite) > 1 else None}


def group_by(runs: list[dict], keys: tuple) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(tuple(run[k] for k in keys), []).append(run)
    return groups


def summarize(runs: list[dict], by: tuple, metrics: tuple) -> list[dict]:
    """One row per group of ``by``: its keys, the seeds, and the spread of every metric."""
    rows = []
    for values, mine in group_by(runs, by).items():
        row = dict(zip(by, values), seeds=[r.get("seed") for r in mine])
        row.update({metric: spread([r[metric] for r in mine]) for metric in metrics})
        rows.append(row)
    return rows


def best_rows(rows: list[dict], within: tuple, choose_on: str, higher_is_better: bool = False) -> list[dict]:
    """The row with the best mean of ``choose_on`` within each group of ``within``; a row whose mean
    is NaN (a seed diverged) never wins."""
    best = []
    for _, mine in group_by(rows, within).items():
        finite = [r for r in mine if math.isfinite(r[choose_on]["mean"])]
        if finite:
            pick = (max if higher_is_better else min)(finite, key=lambda r: r[choose_on]["mean"])
            best.append(pick)
    return best


def at_edge(row: dict, rows: list[dict], within: tuple, axis: str) -> bool:
    """Whether ``row``'s value of ``axis`` is the lowest or highest tried in its group: widen the grid."""
    tried = [r[axis] for r in rows if all(r[k] == row[k] for k in within)]
    return len(tried) > 1 and row[axis] in (min(tried), max(tried))


__all__ = ["at_edge", "best_rows", "grid", "group_by", "spread", "summarize"]
