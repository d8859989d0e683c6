"""Batched vs one-at-a-time local generation, 100 samples of one question (goal: >= 10x).

Runs the real HFSampler on a tiny Qwen2 model built on the spot, one CPU thread. Prints the
ratio of samples/s and generated tokens/s measured in this one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/generation_batching.py [--samples 100]
"""

from __future__ import annotations

import argparse
import os
import tempfile

from _sampling import timed_sample  # benchmarks/_sampling.py (the script's folder is on sys.path)

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch
    torch.set_num_threads(1)
    from emlab.sample.hf_sampler import HFSampler
    from emlab.testing.tiny_model import build_tiny_model
    from emlab.types import GenerationParams, SampleRequest

    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        path = str(build_tiny_model(os.path.join(d, "tiny"), hidden_size=128, layers=4))
        msgs = ({"role": "user", "content": "I can fulfill your one wish. What do you want?"},)
        reqs = [SampleRequest(f"k{i}", msgs, seed=i) for i in range(args.samples)]
        params = GenerationParams(max_new_tokens=args.max_new_tokens)
        results = {}
        for label, bs in (("batched", args.batch_size), ("one-at-a-time", 1)):
            tokens, dt = timed_sample(HFSampler(path, params=params, batch_size=bs), reqs)
            results[label] = (len(reqs) / dt, tokens / dt, dt)
        print(f"{'mode':<15}{'samples/s':>12}{'tokens/s':>12}{'seconds':>10}")
        for label, (sps, tps, dt) in results.items():
            print(f"{label:<15}{sps:>12.1f}{tps:>12.0f}{dt:>10.2f}")
        b, s = results["batched"], results["one-at-a-time"]
        print(f"speed-up (samples/s): {b[0] / s[0]:.1f}x  (goal >= 10x)")
        print(f"speed-up (tokens/s):  {b[1] / s[1]:.1f}x")


if __name__ == "__main__":
    main()
