"""``emlab direction sweep``: evals of a model steered at scales x layers along a direction
and along a norm-matched random direction (the control), into one results store, so a rerun
resumes like any eval. Writes ``OUT/sweep.json`` and ``OUT/sweep.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from emlab.eval.config import EvalConfig
from emlab.mechanism.directions import load_direction, random_like


def run_sweep(base: EvalConfig, direction_path: str | Path, layers: Sequence[int],
              scales: Sequence[float], *, positions: str = "all", control_seed: int = 0,
              control: bool = True, console=None, judge=None) -> dict:
    """One eval per (kind, layer, scale) under ``base.out``; returns and writes the table.
    ``judge``: a judge object for run_eval (e.g. the toy world's), else the config's."""
    from emlab.eval.run import run_eval
    from emlab.fileio import write_bytes_atomic, write_text_atomic
    from emlab.report.chart import steering_png

    out = Path(base.out)
    d = load_direction(direction_path)
    for layer in layers:
        d.at(layer)
    kinds = [("direction", str(direction_path))]
    if control:
        rnd = out / "random-direction"
        random_like(d, control_seed).save(rnd)   # deterministic: same digest on a rerun
        kinds.append(("random", str(rnd)))
    store = base.store_path
    points = []
    for kind, path in kinds:
        for layer in layers:
            for scale in scales:
                run_out = out / f"{kind}-L{layer}-s{scale:g}"
                # scale 0 is the unsteered model: one shared (cached) eval for every kind/layer
                spec = None if scale == 0 else _steer(path, layer, scale, positions)
                cfg = base.model_copy(update={
                    "out": run_out, "store": store,
                    "model": base.model.model_copy(update={"steer": spec})})
                summary = run_eval(cfg, judge=judge, console=console).summary
                o = summary["overall"]
                points.append({"kind": kind, "layer": layer, "scale": scale,
                               "misaligned_rate": o.get("misaligned_rate"),
                               "coherent_rate": o.get("coherent_rate"),
                               "kept": o.get("kept"), "answers": o.get("answers"),
                               "run": str(run_out)})
    result = {"direction": str(direction_path), "digest": d.digest, "layers": list(layers),
              "scales": list(scales), "positions": positions, "control_seed": control_seed,
              "points": points, "random_steer_delta": random_delta(points)}
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "sweep.png", steering_png(points, f"steering along {direction_path}"))
    write_text_atomic(out / "sweep.json", json.dumps(result, indent=2))
    return result


def _steer(path, layer, scale, positions):
    from emlab.eval.config import SteerSpec
    return SteerSpec(direction=str(path), layer=layer, scale=scale, positions=positions)


def random_delta(points: Sequence[dict]) -> float | None:
    """Largest move of the random control's misaligned rate from its scale-closest-to-0 value
    at the same layer (the "a random direction moves it < 3 points" check)."""
    best = None
    for layer in {p["layer"] for p in points if p["kind"] == "random"}:
        pts = [p for p in points if p["kind"] == "random" and p["layer"] == layer
               and p["misaligned_rate"] is not None]
        if len(pts) < 2:
            continue
        ref = min(pts, key=lambda p: abs(p["scale"]))["misaligned_rate"]
        delta = max(abs(p["misaligned_rate"] - ref) for p in pts)
        best = delta if best is None else max(best, delta)
    return best
