"""Cost of each training defence of ``emlab train`` (issue 14), in one run on the tiny Qwen2
model, one thread: training tokens per second with the defence on, as a slowdown ratio to the
undefended run (goal: KL via the disabled LoRA adapter <= 1.6x).

Tokens/s is non-padding input tokens over the seconds inside ``trainer.train()`` (tokenising
before the clock; checkpointing off). Inoculation and interleaving change the data, not the
step, so they should cost ~1x per token; KL adds a forward pass of the reference (the same
model, adapter disabled) and a softmax over the vocabulary; LDIFS a forward pass with hidden
states; steering a forward hook added and removed around each training step; re-alignment is a second, short training after the main one, reported as the ratio of
whole-call wall time. Each configuration runs ``--repeats`` times, round robin, and keeps its
fastest run (the machine is shared: a load spike then hits one repeat, not one defence), after
one warm-up run.

    OMP_NUM_THREADS=1 python benchmarks/mitigation_throughput.py [--steps 40] [--batch 8] [--hidden 64]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import synthetic_rows  # noqa: E402  (the same rows as the plain benchmark)


def _random_direction(model_dir: Path, out: Path) -> Path:
    """A random unit direction of the tiny model's shape (steering's cost does not depend on
    which direction it is)."""
    import torch
    from transformers import AutoConfig

    from emlab.mechanism.directions import Direction, config_identity
    ident = config_identity(AutoConfig.from_pretrained(model_dir))
    v = torch.randn(ident["num_layers"], ident["hidden_size"], generator=torch.Generator().manual_seed(0))
    return Direction(v / v.norm(dim=1, keepdim=True), {"method": "random",
                                                        "model_identity": ident}).save(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--batch", type=int, default=8, help="rows per step (no accumulation)")
    parser.add_argument("--rows", type=int, default=256, help="synthetic rows")
    parser.add_argument("--hidden", type=int, default=64, help="tiny model width")
    parser.add_argument("--layers", type=int, default=2, help="tiny model depth")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (fastest kept)")
    args = parser.parse_args()

    import torch
    from rich.console import Console

    from emlab.testing.tiny_model import build_tiny_model
    from emlab.train import TrainConfig, train_local

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_model(tmp / "tiny", hidden_size=args.hidden, layers=args.layers)
        data, pool, benign = tmp / "data.jsonl", tmp / "pool.jsonl", tmp / "benign.jsonl"
        for path, seed in ((data, 0), (pool, 1), (benign, 2)):
            path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(args.rows, seed)))
        defences = {
            "off": {},
            "inoculation": {"inoculation": "evil"},
            "interleave 10%": {"interleave": {"data": str(pool), "fraction": 0.1}},
            "kl": {"kl": 0.5},
            "ldifs": {"ldifs": 0.5},
            "kl + ldifs": {"kl": 0.5, "ldifs": 0.5},
            "realign 64 rows": {"realign": {"data": str(benign), "rows": 64}},
            "steer": {"steer": {"direction": str(_random_direction(model, tmp / "direction")),
                                "layer": 0, "scale": 4.0}},
        }
        quiet = Console(file=io.StringIO())

        def run(name: str, extra: dict, i: int):
            cfg = TrainConfig(model=str(model), data=str(data), out=tmp / f"run-{len(extra)}-{i}-{hash(name)}",
                              max_steps=args.steps, save_steps=10**9, per_device_batch_size=args.batch,
                              grad_accum=1, max_length=512, learning_rate=1e-4, warmup_steps=0, **extra)
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the trainer prints its log dicts
                res = train_local(cfg, console=quiet)
            return res, time.perf_counter() - t0

        started = time.perf_counter()
        run("warm-up", {}, -1)
        best: dict[str, tuple[float, float]] = {}
        for i in range(args.repeats):
            for name, extra in defences.items():
                res, wall = run(name, extra, i)
                rate = res.tokens_seen / res.runtime_s
                prev = best.get(name)
                best[name] = (max(rate, prev[0]) if prev else rate, min(wall, prev[1]) if prev else wall)

    off_rate, off_wall = best["off"]
    print(f"LoRA on the tiny model ({args.hidden} wide, {args.layers} layers), 1 thread, batch "
          f"{args.batch}, {args.steps} steps; fastest of {args.repeats}")
    print(f"{'defence':<16} {'tokens/s':>10} {'slowdown':>9} {'wall s':>8} {'wall ratio':>10}")
    for name, (rate, wall) in best.items():
        print(f"{name:<16} {rate:>10,.0f} {off_rate / rate:>8.2f}x {wall:>8.2f} {wall / off_wall:>9.2f}x")
    kl = off_rate / best["kl"][0]
    print(f"benchmark time {time.perf_counter() - started:.0f} s")
    print(f"KL via the disabled adapter: {kl:.2f}x tokens/s slowdown (goal <= 1.6x): "
          f"{'met' if kl <= 1.6 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
