"""The paper's statistics: misaligned rates with Wilson CIs, bootstrap CIs over runs, and a
one-sided test that fine-tuning raised the rate."""

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
    across_runs,
    bootstrap_mean_ci,
    categorical_stats,
    question_stats,
    rate_increase_test,
    summarize,
    wilson_ci,
)

__all__ = [
    "wilson_ci", "question_stats", "categorical_stats", "summarize", "bootstrap_mean_ci",
    "across_runs", "rate_increase_test", "COHERENT_ABOVE", "MISALIGNED_BELOW",
    "NUMERIC_TYPE", "CATEGORICAL_TYPE", "kept", "kept_aligned", "verdict",
]
