"""Comparing groups of runs (seeds, models, conditions, checkpoints): one implementation.

Two questions are asked of a group of runs, and each has one answer here:

- *how misaligned is the group?* — :func:`over_runs`: the mean of the runs' rates with a
  percentile-bootstrap CI (each run counts once, as in the paper's error bars), and
  :func:`pool`: the answers pooled over runs with a Wilson CI;
- *did the rate rise over a control?* — :func:`rise`: Fisher's one-sided exact test on the
  pooled counts, with Newcombe's CI of the difference.

``emlab compare`` (:func:`compare_runs`), ``emlab sweep``'s aggregation, ``emlab check``'s
decision and the toy world's report all call these. Pure functions, JSON-friendly results.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from emlab.metrics.rates import bootstrap_mean_ci, rate_increase_test, wilson_ci
from emlab.metrics.rule import is_numeric

COUNTS = ("answers", "coherent", "kept", "misaligned")


def pool(stats: Iterable[Mapping[str, Any] | None], ci: bool = True) -> dict[str, Any]:
    """Counts of several runs' numeric statistics (``question_stats`` outputs, or any mapping
    with ``answers``/``coherent``/``kept``/``misaligned``) summed, with the pooled misaligned
    rate and (``ci=True``) its Wilson 95% CI. None entries and categorical questions are
    skipped."""
    out = {k: 0 for k in COUNTS}
    for s in stats:
        if s is None or not is_numeric(s):
            continue
        for k in COUNTS:
            out[k] += int(s.get(k) or 0)
    out["misaligned_rate"] = out["misaligned"] / out["kept"] if out["kept"] else None
    if ci:
        lo, hi = wilson_ci(out["misaligned"], out["kept"]) if out["kept"] else (None, None)
        out["ci_low"], out["ci_high"] = lo, hi
    return out


def over_runs(values: Sequence[float | None], n_boot: int = 10000, seed: int = 0
              ) -> dict[str, Any]:
    """Mean over runs with a percentile-bootstrap 95% CI; runs without a value (None) are left
    out of the mean and kept in ``values``."""
    present = [v for v in values if v is not None]
    mean = lo = hi = None
    if present:
        mean, lo, hi = bootstrap_mean_ci(present, n_boot=n_boot, seed=seed)
    return {"mean": mean, "ci_low": lo, "ci_high": hi,
            "runs_with_data": len(present), "values": list(values)}


def across_runs(summaries: Sequence[Mapping[str, Any]], n_boot: int = 10000,
                seed: int = 0) -> dict[str, Any]:
    """Mean misaligned rate over runs (models or seeds) with a 95% bootstrap CI.

    Takes :func:`emlab.metrics.summarize` outputs. Each run counts once, whatever its answer
    count, as in the paper's error bars. A run without kept answers for a question is left
    out of that question's mean (its entry in ``values`` is None). Only numeric questions.
    """
    qids: list[str] = []
    for s in summaries:
        for qid, q in s["questions"].items():
            if is_numeric(q) and qid not in qids:
                qids.append(qid)

    def rate(s: Mapping[str, Any], qid: str) -> float | None:
        q = s["questions"].get(qid)
        return None if q is None else q.get("misaligned_rate")

    return {
        "runs": len(summaries),
        "overall": {
            "misaligned_rate": over_runs(
                [s["overall"]["misaligned_rate"] for s in summaries], n_boot, seed),
            "misaligned_rate_question_mean": over_runs(
                [s["overall"].get("misaligned_rate_question_mean") for s in summaries],
                n_boot, seed),
        },
        "questions": {qid: over_runs([rate(s, qid) for s in summaries], n_boot, seed)
                      for qid in qids},
    }


def rise(control: Mapping[str, Any], tuned: Mapping[str, Any], level: float = 0.95
         ) -> dict[str, Any] | None:
    """Did ``tuned``'s misaligned rate rise over ``control``'s? (pooled counts: ``kept`` and
    ``misaligned``). :func:`emlab.metrics.rate_increase_test`, or None when either side has no
    kept answers."""
    if not control.get("kept") or not tuned.get("kept"):
        return None
    return rate_increase_test(int(control["misaligned"]), int(control["kept"]),
                              int(tuned["misaligned"]), int(tuned["kept"]), level=level)


def compare_runs(summaries: Sequence[Mapping[str, Any]], labels: Sequence[str],
                 baseline: Mapping[str, Any] | None = None, n_boot: int = 10000
                 ) -> dict[str, Any]:
    """What ``emlab compare`` prints: the mean over runs with bootstrap CIs and, against a
    baseline summary, each run's rise (runs without kept answers are left out)."""
    result: dict[str, Any] = {"runs": list(labels), "across_runs": across_runs(summaries, n_boot)}
    if baseline is not None:
        tests = {label: rise(baseline["overall"], s["overall"])
                 for label, s in zip(labels, summaries)}
        result["vs_baseline"] = {k: v for k, v in tests.items() if v is not None}
    return result
