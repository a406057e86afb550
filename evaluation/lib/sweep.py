"""Sweeps: the cells of a grid, the spread of a metric over seeds, and the search that puts every
group at its own best rate, chosen on one metric (a validation metric; the test metric of the
chosen rate is reported)."""

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


def _sig(x: float) -> float:
    return float(f"{x:.3g}")


def _in_group(run: dict, group: dict) -> bool:
    return all(run.get(k) == v for k, v in group.items())


def rate_search(runs: list[dict], groups: list[dict], rates: list[float], seeds: list[int], choose_on: str,
                rate_key: str = "lr", higher_is_better: bool = False, factor: float = 3.0, max_rates: int = 6) -> list[dict]:
    """The cells still to run so that every group (e.g. {"model": "llama"}) is at its best rate.

    First every rate of ``rates`` with ``seeds[0]``; while a group's best (on ``choose_on``, a
    validation metric; a NaN run never wins) is the lowest or highest rate it tried, one more rate
    ``factor`` beyond it (up to ``max_rates`` in all; see ``at_the_edge``); then the other seeds at
    the chosen rate.
    Call again after running what it returns, until it returns nothing: it is stateless, so a
    resumed file carries on where it stopped."""
    pending = []
    for group in groups:
        mine = [r for r in runs if _in_group(r, group) and r.get("seed") == seeds[0]]
        tried = {r[rate_key]: r[choose_on] for r in mine}
        missing = [lr for lr in rates if lr not in tried]
        if missing:
            pending += [{**group, rate_key: lr, "seed": seeds[0]} for lr in missing]
            continue
        best = chosen_rate(tried, higher_is_better)
        beyond = None
        if best is None:  # every rate diverged: go lower
            beyond = _sig(min(tried) / factor)
        elif at_the_edge(tried, best):
            beyond = _sig(best * factor if best == max(tried) else best / factor)
        if beyond is not None and len(tried) < max_rates:
            pending.append({**group, rate_key: beyond, "seed": seeds[0]})
        elif best is not None:
            done = {r.get("seed") for r in runs if _in_group(r, group) and r[rate_key] == best}
            pending += [{**group, rate_key: best, "seed": s} for s in seeds if s not in done]
    return pending


def at_the_edge(metric_by_rate: dict, best) -> bool:
    """Whether ``best`` is the lowest or highest rate tried and no other rate equals its metric (a
    tie with an inner rate, e.g. two runs that both reached an accuracy target, is no edge)."""
    ties = [lr for lr, v in metric_by_rate.items() if v == metric_by_rate[best]]
    return len(metric_by_rate) > 1 and len(ties) == 1 and best in (min(metric_by_rate), max(metric_by_rate))


def chosen_rate(metric_by_rate: dict, higher_is_better: bool = False):
    """The rate with the best finite metric (of equal ones, the lowest rate), or None if every run
    diverged."""
    finite = {lr: v for lr, v in metric_by_rate.items() if v is not None and math.isfinite(v)}
    if not finite:
        return None
    best = (max if higher_is_better else min)(finite.values())
    return min(lr for lr, v in finite.items() if v == best)


def tuned_summary(runs: list[dict], groups: list[dict], seeds: list[int], choose_on: str, report: tuple,
                  rate_key: str = "lr", higher_is_better: bool = False) -> dict:
    """{"by_rate": ``choose_on`` of every rate tried with seeds[0], per group; "chosen": per group, the
    rate chosen on ``choose_on``, whether it lies at the edge of what was tried, and the spread of
    every metric of ``report`` over the seeds run at that rate}."""
    by_rate, chosen = [], []
    for group in groups:
        mine = [r for r in runs if _in_group(r, group)]
        tried = {r[rate_key]: r[choose_on] for r in mine if r.get("seed") == seeds[0]}
        by_rate += [{**group, rate_key: lr, choose_on: tried[lr]} for lr in sorted(tried)]
        best = chosen_rate(tried, higher_is_better)
        if best is None:
            continue
        at_best = [r for r in mine if r[rate_key] == best and r.get("seed") in seeds]
        row = {**group, rate_key: best, "at_edge": at_the_edge(tried, best),
               "seeds": [r["seed"] for r in at_best]}
        row.update({metric: spread([r[metric] for r in at_best]) for metric in report})
        chosen.append(row)
    return {"by_rate": by_rate, "chosen": chosen}


__all__ = ["at_the_edge", "chosen_rate", "grid", "group_by", "rate_search", "spread", "summarize",
           "tuned_summary"]
