"""Monitoring a direction during fine-tuning (Chen et al. 2025): the projection of a fixed
probe set's activations — the last prompt token of each probe question, where the model
"decides" how to answer — on the direction, logged at every dynamics step. A shift along it
predicts the trait the fine-tune will show."""

from __future__ import annotations

from typing import Sequence

from emlab.mechanism.directions import Direction, response_activations
from emlab.mechanism.measure import projections


# Part of a monitored trial's cache key: version 2 renders each probe with its system prompt
# (version 1 dropped it, so a model always used under a system line was probed out of context).
MONITOR_VERSION = 2


def prompt_projections(model, tok, prompts: Sequence[Sequence[dict]], direction: Direction,
                       layer: int, batch_size: int = 16) -> list[float]:
    """Projection at ``layer`` of the last prompt token of each chat prompt (a list of
    messages, rendered with the generation prompt)."""
    acts = response_activations(model, tok, [(list(p), "") for p in prompts],
                                batch_size=batch_size)
    return projections(acts, direction)[:, layer].tolist()


def monitor_rows(model, tok, probes, direction: Direction, layer: int) -> list[dict]:
    """The dynamics.jsonl rows of one step: format ``projection``, one per probe (each with
    its own system prompt, as the behavioural probes are scored)."""
    sys = lambda p: [{"role": "system", "content": p.system}] if p.system else []  # noqa: E731
    vals = prompt_projections(model, tok, [sys(p) + [{"role": "user", "content": p.question}]
                                           for p in probes], direction, layer)
    return [{"probe": p.id, "format": "projection", "layer": layer, "projection": v}
            for p, v in zip(probes, vals)]


def projection_curve(rows, layer: int | None = None) -> dict[int, float]:
    """``{step: mean projection}`` from dynamics.jsonl rows (format ``projection``)."""
    by: dict[int, list[float]] = {}
    for r in rows:
        if r.get("format") == "projection" and (layer is None or r.get("layer") == layer):
            by.setdefault(int(r["step"]), []).append(float(r["projection"]))
    return {s: sum(v) / len(v) for s, v in sorted(by.items())}


def activation_shift(base, tuned, prompts: Sequence[Sequence[dict]], direction: Direction,
                     layer: int) -> dict:
    """How far a fine-tune moved the model along ``direction`` on ``prompts`` (Chen et al.'s
    "activation shift", the monitoring signal after training): per prompt, the tuned model's
    last-prompt-token projection minus the base's, at ``layer``. ``base`` and ``tuned`` are
    ``(model, tokenizer)`` pairs. ``share`` puts the mean shift on the direction's own scale:
    a difference-of-means direction's norm is the distance between its two groups, so 1.0
    means the tuned model moved as far as from the aligned to the misaligned group."""
    direction.check_model(base[0])
    direction.check_model(tuned[0])
    direction.at(layer)
    b = prompt_projections(*base, prompts, direction, layer)
    t = prompt_projections(*tuned, prompts, direction, layer)
    diffs = [y - x for x, y in zip(b, t)]
    n = max(1, len(diffs))
    mean = sum(diffs) / n
    sd = (sum((d - mean) ** 2 for d in diffs) / max(1, n - 1)) ** 0.5
    norm = float(direction.vectors[layer].norm())
    return {"layer": layer, "prompts": len(diffs), "norm": norm,
            "base_mean": sum(b) / n, "tuned_mean": sum(t) / n, "shift": mean,
            "share": mean / norm if norm > 0 else None,
            "shift_sd": sd, "positive_share": sum(d > 0 for d in diffs) / n,
            "per_prompt": diffs}
