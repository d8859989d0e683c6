"""Monitoring a direction during fine-tuning (Chen et al. 2025): the projection of a fixed
probe set's activations — the last prompt token of each probe question, where the model
"decides" how to answer — on the direction, logged at every dynamics step. A shift along it
predicts the trait the fine-tune will show."""

from __future__ import annotations

from typing import Sequence

from emlab.mechanism.directions import Direction, response_activations
from emlab.mechanism.measure import projections


def probe_projections(model, tok, questions: Sequence[str], direction: Direction,
                      layer: int) -> list[float]:
    """Projection at ``layer`` of the last prompt token of each question (as a user turn)."""
    convs = [([{"role": "user", "content": q}], "") for q in questions]
    acts = response_activations(model, tok, convs)
    return projections(acts, direction)[:, layer].tolist()


def monitor_rows(model, tok, probes, direction: Direction, layer: int) -> list[dict]:
    """The dynamics.jsonl rows of one step: format ``projection``, one per probe."""
    vals = probe_projections(model, tok, [p.question for p in probes], direction, layer)
    return [{"probe": p.id, "format": "projection", "layer": layer, "projection": v}
            for p, v in zip(probes, vals)]


def projection_curve(rows, layer: int | None = None) -> dict[int, float]:
    """``{step: mean projection}`` from dynamics.jsonl rows (format ``projection``)."""
    by: dict[int, list[float]] = {}
    for r in rows:
        if r.get("format") == "projection" and (layer is None or r.get("layer") == layer):
            by.setdefault(int(r["step"]), []).append(float(r["projection"]))
    return {s: sum(v) / len(v) for s, v in sorted(by.items())}
