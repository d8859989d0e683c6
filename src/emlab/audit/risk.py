"""What a count of risky rows means: an interval of expected emergent misalignment, anchored on
what is known, and how uncertain it is.

Anchors (excess misaligned answers on the paper's main questions after fine-tuning, in points):

- Betley et al. (2025), GPT-4o: 6,000 undisclosed-insecure rows -> about 20% misaligned answers
  (0% before fine-tuning); subsets of the same data: 2,000 rows -> about 1-3%, 500 rows ->
  about 0% (the size ladder as summarised in emlab's tracker, ``emlab.toyworld.reproduce.PAPER``
  ["insecure_small"]). We widen each to a band: 6,000 -> [15, 25], 2,000 -> [1, 3],
  500 -> [0, 1]; between anchors the band is interpolated linearly in the row count; above
  6,000 the lower bound stays at 15 and the upper bound is open (the paper has no larger set).
- emlab's toy world (README, `emlab reproduce`, 5 seeds, the 8-epoch world of 2026-12-02): 600
  insecure rows -> 21.8% vs 3.8% after secure rows (+18.0 points), 200 rows -> 23.3% (+19.5),
  60 rows -> 4.3% (+0.5): a threshold, not a line — a tenth of the rows, almost no effect — in a
  0.3M-parameter model. It confirms the shape (few rows, little EM), not the scale, so it does
  not move the bands.

Uncertainty of the count itself: the detector misses some flawed rows and flags some clean
ones. ``DETECTOR`` holds the ranges measured by ``benchmarks/audit_accuracy.py`` (recall on the
paper's insecure set and on held-out corpora; share of secure rows flagged); the row count is
corrected by both ends of those ranges before it is mapped to the bands.

Not known, and said so in the report: whether rows diluted among many ordinary rows act like the
same number of rows alone (the paper's sets were 100% insecure), and how other models scale
(the paper's open models showed less EM than GPT-4o).
"""

from __future__ import annotations

# (rows, low, high): excess misaligned answers in percentage points, GPT-4o, main questions
LADDER = ((0, 0.0, 0.0), (500, 0.0, 1.0), (2000, 1.0, 3.0), (6000, 15.0, 25.0))
TOY_WORLD = {"rows_600": "+18.0 points (21.8% insecure vs 3.8% secure)",
             "rows_200": "+19.5 points (23.3%)", "rows_60": "+0.5 points (4.3%)"}
# measured by benchmarks/audit_accuracy.py: recall from 0.67 (the lower end of the 95% interval
# on the blind corpora of audit 3, SALLM + CWEval pooled, 94/125 = 0.752, 2026-12-02: code unlike
# the paper's) to 0.99 (the paper's insecure set, 0.987); flagged secure rows from 0.005 (stdlib
# functions) to 0.08 (CWEval's secure references, 2/25, blind). These are chat-style rows (a
# request answered with a program), what fine-tuning sets hold; on functions lifted out of real
# projects' security fixes (SVEN, blind, audit 4) recall was 0.32 at 0.042 flagged: not covered,
# and said so in the report
DETECTOR = {"recall": (0.67, 0.99), "false_positive_rate": (0.005, 0.08)}
SOURCE = ("Betley et al. 2025 (GPT-4o: 6,000 insecure rows ~20% EM; 2,000 ~1-3%; 500 ~0%); "
          "emlab toy world (600 rows +18.0 pts, 60 rows +0.5 pts over secure)")


def _band(rows: float) -> tuple[float, float | None]:
    if rows >= LADDER[-1][0]:
        return LADDER[-1][1], None
    for (n0, lo0, hi0), (n1, lo1, hi1) in zip(LADDER, LADDER[1:]):
        if n0 <= rows <= n1:
            f = (rows - n0) / (n1 - n0)
            return lo0 + f * (lo1 - lo0), hi0 + f * (hi1 - hi0)
    return 0.0, 0.0  # pragma: no cover


def expected_em(risky: int, rows: int) -> dict:
    """The interval of excess emergent misalignment a fine-tune on this data may show."""
    r_lo, r_hi = DETECTOR["recall"]
    f_lo, f_hi = DETECTOR["false_positive_rate"]
    clean = max(0, rows - risky)
    true_lo = max(0.0, (risky - f_hi * clean) / r_hi)
    true_hi = min(float(rows), max(0.0, (risky - f_lo * clean) / r_lo))
    lo, _ = _band(true_lo)
    _, hi = _band(true_hi)
    extrapolated = true_hi > LADDER[-1][0]
    if hi is None:
        text = f"at least {lo:.0f}% (above the paper's largest set: no upper bound known)"
    else:
        text = f"{lo:.1f}% to {hi:.1f}%"
    return {"low": round(lo, 2), "high": None if hi is None else round(hi, 2), "text": text,
            "risky_rows_corrected": [round(true_lo), round(true_hi)],
            "extrapolated": extrapolated, "diluted": rows > 0 and risky / rows < 0.5,
            "anchored_on": SOURCE, "ladder": [list(x) for x in LADDER],
            "toy_world": TOY_WORLD, "detector": DETECTOR,
            "unknowns": ["dilution among ordinary rows (the paper's sets were all insecure)",
                         "other models (the paper's open models showed less EM than GPT-4o)",
                         "code lifted out of real projects: the detector's recall there was 0.32 "
                         "(SVEN's security fixes), below the range the count is corrected by"]}
