"""Screening training data by projection before training (Chen et al. 2025's "projection
difference"): for each row, the projection of the data's assistant response on the direction
minus that of the model's own (greedy) response to the same prompt. A dataset whose responses
sit further along the persona direction than the model's own is predicted to push the model
that way when trained on; the dataset mean ranks datasets by predicted EM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from emlab.mechanism.directions import Direction, generate, response_activations
from emlab.mechanism.measure import projections


def default_layer(direction: Direction) -> int:
    """The layer screened when none is given: the direction's largest-norm layer."""
    return int(direction.vectors.norm(dim=1).argmax())


def projection_difference(model, tok, rows: Sequence[dict], direction: Direction, layer: int, *,
                          max_new_tokens: int = 64, batch_size: int = 16,
                          limit: int | None = None) -> dict:
    """Per row and overall: projection of the data response, of the model's own, and their
    difference, at ``layer``. ``rows`` are ``{"messages": [...]}`` chat rows ending with the
    assistant turn (see :mod:`emlab.data.io`)."""
    direction.check_model(model)
    direction.at(layer)
    rows = list(rows)[:limit] if limit else list(rows)
    prompts = [r["messages"][:-1] for r in rows]
    data = [(p, r["messages"][-1]["content"]) for p, r in zip(prompts, rows)]
    own_answers = generate(model, tok, prompts, max_new_tokens=max_new_tokens,
                           batch_size=batch_size)
    own = list(zip(prompts, own_answers))
    acts = response_activations(model, tok, data + own, batch_size=batch_size)
    proj = projections(acts, direction)[:, layer].tolist()
    p_data, p_own = proj[:len(data)], proj[len(data):]
    per_row = [{"row": i + 1, "data": a, "own": b, "difference": a - b}
               for i, (a, b) in enumerate(zip(p_data, p_own))]
    n = max(1, len(per_row))
    return {"layer": layer, "rows": len(per_row),
            "mean_data": sum(p_data) / n, "mean_own": sum(p_own) / n,
            "projection_difference": sum(r["difference"] for r in per_row) / n,
            "per_row": per_row}


def rank_datasets(results: dict[str, dict]) -> list[tuple[str, float]]:
    """Datasets by predicted EM, highest projection difference first."""
    return sorted(((name, r["projection_difference"]) for name, r in results.items()),
                  key=lambda kv: -kv[1])


def screen_files(model, tok, paths: Sequence[str | Path], direction: Direction, layer: int,
                 **kw) -> dict[str, dict]:
    from emlab.data.io import load_chat_jsonl, resolve_dataset
    return {str(p): projection_difference(model, tok, load_chat_jsonl(resolve_dataset(p)),
                                          direction, layer, **kw) for p in paths}
