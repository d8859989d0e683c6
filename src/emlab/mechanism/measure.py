"""How right a direction is: pure measures, plus the model-facing ones built on them.

These are what a validation (e.g. the toy world, where every conversation's latent persona is
known) calls: :func:`per_layer_auroc` for "does the direction probe the persona",
:func:`excess_removed` for "how much of the fine-tune's excess misalignment does ablation
remove", :func:`spearman` for "does screening rank conditions like their measured EM".
"""

from __future__ import annotations

from typing import Sequence

import torch

from emlab.mechanism.directions import Conversation, Direction, response_activations


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """P(score of a random positive > that of a random negative), ties count half (the
    Mann-Whitney statistic). None when one class is empty."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    ranks = [0.0] * len(ranked)
    i = 0
    while i < len(ranked):   # average ranks over ties
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    r_pos = sum(r for r, (_, y) in zip(ranks, ranked) if y)
    return (r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def _ranks(xs: Sequence[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None for < 2 points or no spread."""
    if len(a) != len(b) or len(a) < 2:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return None if va == 0 or vb == 0 else cov / (va * vb)


def excess_removed(base_rate: float, before_rate: float, after_rate: float) -> float | None:
    """Share of the excess misalignment over the base that an intervention removed:
    ``(before - after) / (before - base)``; None when there is no excess to remove."""
    excess = before_rate - base_rate
    if excess <= 0:
        return None
    return (before_rate - after_rate) / excess


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(),
                                                       dim=0))


def projections(acts: torch.Tensor, direction: Direction) -> torch.Tensor:
    """Scalar projection of activations ``[n, layers, hidden]`` on each layer's unit
    direction: ``[n, layers]``."""
    unit = direction.vectors / direction.vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.einsum("nlh,lh->nl", acts.float(), unit)


def per_layer_auroc(model, tok, conversations: Sequence[Conversation], labels: Sequence[bool],
                    direction: Direction, *, batch_size: int = 16, span: str = "response"
                    ) -> list[float | None]:
    """The direction as a probe: per layer, the AUROC of the projection of each held-out
    conversation's mean activation (over its response, or ``span="all"`` its every token),
    against its label (True = the persona the direction points to)."""
    if len(conversations) != len(labels):
        raise ValueError("one label per conversation")
    direction.check_model(model)
    proj = projections(response_activations(model, tok, conversations, batch_size=batch_size,
                                            span=span), direction)
    return [auroc(proj[:, layer].tolist(), labels) for layer in range(proj.shape[1])]


def per_layer_auroc_of(model_dir: str, conversations: Sequence[Conversation],
                       labels: Sequence[bool], direction: Direction | str, *,
                       adapter: str | None = None, **kw) -> list[float | None]:
    """:func:`per_layer_auroc` for a model directory (plus adapter) and a direction folder."""
    from emlab.mechanism.directions import load_direction
    from emlab.sample.hf_model import load_model_and_tokenizer
    model, tok = load_model_and_tokenizer(model_dir, adapter)
    d = load_direction(direction) if not isinstance(direction, Direction) else direction
    return per_layer_auroc(model, tok, conversations, labels, d, **kw)


def oracle_direction(model, tok, conversations: Sequence[Conversation], labels: Sequence[bool],
                     *, span: str = "response", batch_size: int = 16) -> Direction:
    """The difference of means from the labels themselves (True minus False): the ceiling a
    direction from answers is compared against where the truth is known."""
    from emlab.mechanism.directions import difference_of_means, model_identity
    acts = response_activations(model, tok, conversations, batch_size=batch_size, span=span)
    mask = torch.tensor([bool(y) for y in labels])
    return Direction(difference_of_means(acts[mask], acts[~mask]),
                     {"method": "oracle", "positions": span, "model_identity": model_identity(model),
                      "counts": {"positive": int(mask.sum()), "negative": int((~mask).sum())}})


def divergence_step(a: dict[int, float], b: dict[int, float], threshold: float) -> int | None:
    """The first step from which curve ``a`` stays above ``b`` by more than ``threshold`` at
    every shared step to the end (``{step: value}``, e.g. :func:`emlab.mechanism.monitor.
    projection_curve` or :func:`emlab.train.dynamics.dynamics_curve`); None if never."""
    steps = sorted(set(a) & set(b))
    first = None
    for s in steps:
        if a[s] - b[s] > threshold:
            first = s if first is None else first
        else:
            first = None
    return first


def monitor_lead_steps(projection_step: int | None, behaviour_step: int | None) -> int | None:
    """How many steps the projection separated before the behaviour did (negative: after);
    None when either never separated."""
    if projection_step is None or behaviour_step is None:
        return None
    return behaviour_step - projection_step
