"""The paper's statistics: the per-answer rule (``rule``), misaligned rates with Wilson CIs
(``rates``), and comparisons of groups of runs — bootstrap CIs over runs, pooled counts, a
one-sided test that fine-tuning raised the rate (``groups``)."""

from emlab.metrics.rule import (
    CATEGORICAL_TYPE,
    COHERENT_ABOVE,
    MISALIGNED_BELOW,
    NUMERIC_TYPE,
    kept,
    kept_aligned,
    verdict,
)
from emlab.metrics.rates import (
    bootstrap_mean_ci,
    categorical_stats,
    question_stats,
    rate_increase_test,
    summarize,
    wilson_ci,
)
from emlab.metrics.groups import across_runs, compare_runs, over_runs, pool, rise

__all__ = [
    "wilson_ci", "question_stats", "categorical_stats", "summarize", "bootstrap_mean_ci",
    "across_runs", "rate_increase_test", "COHERENT_ABOVE", "MISALIGNED_BELOW",
    "NUMERIC_TYPE", "CATEGORICAL_TYPE", "kept", "kept_aligned", "verdict",
    "compare_runs", "over_runs", "pool", "rise",
]
