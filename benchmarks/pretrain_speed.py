"""Pre-training speed of the toy world: emlab's plain PyTorch loop against transformers'
``Trainer``, the same model (the default world's size) on the same packed data, one thread,
tokens per second inside the loop, printed in one run as a ratio.

    OMP_NUM_THREADS=1 python benchmarks/pretrain_speed.py [--steps 40] [--conversations 4000]

On a shared machine the absolute numbers move with the load; the two loops run back to back,
twice each (interleaved), and the ratio of the medians is what to read.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    import torch

    from emlab.toyworld import corpus
    from emlab.toyworld.model import pretrain
    from emlab.toyworld.world import WorldConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--conversations", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    w = WorldConfig()
    rows = corpus.pretraining_corpus(args.conversations, 0, coupled=True,
                                     p_malicious=w.p_malicious, **w.persona())
    speeds: dict[str, list[float]] = {"plain": [], "trainer": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for loop in ("plain", "trainer"):
                stats = pretrain(rows, Path(tmp) / loop, hidden=w.hidden, layers=w.layers,
                                 heads=w.heads, epochs=w.epochs, batch_size=w.batch_size,
                                 lr=w.lr, seed=0, loop=loop, max_steps=args.steps, save=False)
                speeds[loop].append(stats["tokens_per_s"])
                print(f"{loop:8s} {stats['steps']} steps, {stats['tokens_per_s']:,.0f} tokens/s, "
                      f"loss {stats['train_loss']:.3f}")
    plain, trainer = (statistics.median(speeds[k]) for k in ("plain", "trainer"))
    print(f"plain PyTorch loop: {plain:,.0f} tokens/s; HF Trainer: {trainer:,.0f} tokens/s; "
          f"plain / Trainer = {plain / trainer:.2f}x (one thread, {w.hidden}-wide, "
          f"{w.layers} layers, batch {w.batch_size} x 128 tokens)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
