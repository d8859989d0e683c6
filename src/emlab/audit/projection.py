"""The audit's optional persona-projection signal (``emlab audit --model M --direction D``).

Chen et al. (2025)'s "projection difference", computed by
:func:`emlab.mechanism.screen.projection_difference` (this module is only the glue): per row,
the projection of the dataset's assistant response on the unit persona direction at a decoder
layer, minus that of the model's own greedy answer to the same prompt (response tokens' mean
residual). Positive: the data sits further along the persona (e.g. "evil", or an EM direction)
than what the model would say itself, so fine-tuning on it is predicted to move the model
toward that persona — Chen et al. found the dataset mean predicts the trait's expression after
fine-tuning. The standardized effect divides it by the standard deviation of the model's own
projections (how far, in units of the model's ordinary spread, the data pulls).

How it enters the risk: it does not. The level stays anchored on the paper's counts of risky
rows; there is no calibration from a projection difference to an emergent-misalignment rate
that holds across models, directions and layers (the number is in the direction's units, and
Chen et al. compare datasets on one model rather than give thresholds). It is reported beside
the level, with its scale, for a reader to compare with a known-benign set on the same model
(``emlab direction project``) — not folded into LOW/MEDIUM/HIGH.

Cost: one generation and two forward passes per projected row, so it is off by default and
runs on a seeded random sample of ``rows`` rows (file order kept; all rows when the dataset is
no larger). torch / transformers are imported only here, only when it is used.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Sequence

TOP = 10  # rows furthest along the direction, listed in the summary


@dataclass(frozen=True)
class ProjectionSettings:
    """Which model and direction, where, how many rows (stored in the report's settings)."""

    model: str
    direction: str
    adapter: str | None = None
    layer: int | None = None       # None: the direction's largest-norm layer
    rows: int = 200                # a seeded random sample of this many rows
    seed: int = 0
    max_new_tokens: int = 64       # length of the model's own answers (as direction project)
    batch_size: int = 16
    device: str | None = None

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError(f"the projection needs at least one row, got {self.rows}")

    def as_dict(self) -> dict:
        return {"model": self.model, "adapter": self.adapter, "direction": self.direction,
                "layer": self.layer, "rows": self.rows, "seed": self.seed,
                "max_new_tokens": self.max_new_tokens}


def prepare(settings: ProjectionSettings):
    """Load the direction, check it against the model's config (no weights loaded) and
    resolve the layer: InputError naming the direction's file on a mismatch. Returns
    ``(direction, layer)``. Called by the CLI before anything is audited or written."""
    from emlab.mechanism.directions import check_against, load_direction
    from emlab.mechanism.screen import default_layer

    d = load_direction(settings.direction)
    check_against(d, settings.model, settings.direction)
    layer = default_layer(d) if settings.layer is None else settings.layer
    d.at(layer)
    return d, layer


def sample_indices(n: int, k: int, seed: int = 0) -> list[int]:
    """The rows projected: all of them when ``k >= n``, else ``k`` drawn at random (seeded),
    in file order (datasets are often sorted: the first rows need not be typical)."""
    if k >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), k))


def _std(xs: Sequence[float]) -> float | None:
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def persona_projection(rows: Sequence[dict], audited: list[dict], settings: ProjectionSettings,
                       loaded=None) -> dict:
    """Project the sampled rows; add ``projection_difference`` (and ``projection``: data,
    own) to those rows of ``audited`` (the audit's per-row records); return the summary's
    ``persona_projection`` block. ``loaded``: ``(model, tokenizer, info)`` already loaded
    (default: load ``settings.model`` as ``emlab direction`` does)."""
    from emlab.mechanism.screen import projection_difference

    t0 = time.perf_counter()
    d, layer = prepare(settings)
    if loaded is None:
        from emlab.sample.hf_model import fingerprint, load_model_and_tokenizer
        m, t = load_model_and_tokenizer(settings.model, settings.adapter, settings.device)
        loaded = m, t, {"name": settings.model, "adapter": settings.adapter,
                        "fingerprint": fingerprint(settings.model, settings.adapter)}
    model, tok, info = loaded
    idx = sample_indices(len(rows), settings.rows, settings.seed)
    res = projection_difference(model, tok, [rows[i] for i in idx], d, layer,
                                max_new_tokens=settings.max_new_tokens,
                                batch_size=settings.batch_size)
    per = []
    for i, pr in zip(idx, res["per_row"]):
        r = audited[i]
        r["projection_difference"] = pr["difference"]
        r["projection"] = {"data": pr["data"], "own": pr["own"], "layer": layer}
        per.append({"index": i, "line": r.get("line"), "difference": pr["difference"],
                    "data": pr["data"], "own": pr["own"], "category": r["category"],
                    "risky": r["risky"], "prompt": r["prompt"][:160]})
    diffs = [p["difference"] for p in per]
    sd_own = _std([p["own"] for p in per])
    sd_diff = _std(diffs)
    mean = res["projection_difference"]
    half = 1.96 * sd_diff / math.sqrt(len(diffs)) if sd_diff is not None else None

    def group(flag: bool) -> dict:
        ds = [p["difference"] for p in per if p["risky"] == flag]
        return {"rows": len(ds), "mean_difference": sum(ds) / len(ds) if ds else None}

    return {
        "model": {"name": info.get("name"), "adapter": info.get("adapter"),
                  "fingerprint": info.get("fingerprint")},
        "direction": {"path": str(settings.direction), "digest": d.digest,
                      "method": d.manifest.get("method"), "trait": d.manifest.get("trait")},
        "layer": layer, "rows": res["rows"], "rows_in_dataset": len(rows),
        "sample_seed": settings.seed, "row_indices": idx,
        "max_new_tokens": settings.max_new_tokens,
        "mean_data": res["mean_data"], "mean_own": res["mean_own"],
        "projection_difference": mean,
        "difference_ci95": [mean - half, mean + half] if half is not None else None,
        "std_own": sd_own, "std_difference": sd_diff,
        "standardized_effect": mean / sd_own if sd_own else None,
        "risky_rows": group(True), "other_rows": group(False),
        "top": sorted(per, key=lambda p: -p["difference"])[:TOP],
        "interpretation": INTERPRETATION,
        "seconds": time.perf_counter() - t0,
    }


INTERPRETATION = (
    "Projection difference (Chen et al. 2025): the mean, over the projected rows, of the "
    "projection of the dataset's answer on the unit persona direction minus that of the model's "
    "own greedy answer to the same prompt. Positive: the data sits further along the persona than "
    "the model already does, so fine-tuning on it is predicted to move the model that way. The "
    "standardized effect is that difference in standard deviations of the model's own "
    "projections. It does not change the risk level: no calibration from this number to an "
    "emergent-misalignment rate exists; compare it with a known-benign dataset on the same model "
    "and direction (emlab direction project).")
