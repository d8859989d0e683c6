"""Steering overhead and extraction cost (issue 13), one CPU thread, one run.

1. Generation tokens/s of the real HFSampler with steering off vs on (a forward hook adding
   S * v at one layer, response positions; and ablation at every layer). Goal: steering at
   most 1.1x slower. Off and on alternate for ``--repeats`` rounds; the best round of each is
   compared, so a noisy neighbour on the shared machine hurts both alike.
2. Extraction cost: seconds (and seconds per 1,000 answers) of the response-token mean
   activations that a direction from judged answers needs.

The default model is a random tiny Qwen2 (hidden 256, 4 layers) built on the spot; a hook's
cost is fixed per layer call, so a larger ``--model`` (e.g. a local SmolLM2) shows a smaller
ratio than this worst case.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/steering.py [--model DIR] [--samples 32]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from _sampling import timed_sample  # benchmarks/_sampling.py (the script's folder is on sys.path)

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch
    torch.set_num_threads(1)
    from emlab.mechanism.directions import response_activations
    from emlab.sample.hf_model import load_model_and_tokenizer
    from emlab.sample.hf_sampler import HFSampler
    from emlab.testing.tiny_model import build_tiny_model
    from emlab.types import GenerationParams, SampleRequest

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--answers", type=int, default=200, help="answers for the extraction cost")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        path = args.model or str(build_tiny_model(os.path.join(d, "tiny"), hidden_size=256,
                                                  layers=4))
        model, tok = load_model_and_tokenizer(path)
        width, n_layers = model.config.hidden_size, model.config.num_hidden_layers
        v = torch.randn(width)
        v = v / v.norm()
        msgs = ({"role": "user", "content": "I can fulfill your one wish. What do you want?"},)
        reqs = [SampleRequest(f"k{i}", msgs, seed=i) for i in range(args.samples)]
        params = GenerationParams(max_new_tokens=args.max_new_tokens)
        modes = {
            "off": None,
            "steer": {"steer": {"vector": v, "layer": n_layers // 2, "scale": 4.0,
                                "positions": "response"}, "identity": "bench"},
            "ablate-all": {"ablate": {"vectors": {i: v for i in range(n_layers)}},
                           "identity": "bench"},
        }
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            for label, iv in modes.items():
                sampler = HFSampler(path, params=params, batch_size=args.samples, intervention=iv)
                tokens, dt = timed_sample(sampler, reqs)
                tps = tokens / dt
                best[label] = max(best.get(label, 0.0), tps)
        print(f"model: {path if args.model else 'tiny Qwen2 (hidden 256, 4 layers)'}; "
              f"{args.samples} samples x {args.max_new_tokens} tokens, best of {args.repeats}")
        print(f"{'mode':<12}{'tokens/s':>10}{'slowdown':>10}")
        for label, tps in best.items():
            print(f"{label:<12}{tps:>10.0f}{best['off'] / tps:>9.2f}x")
        print(f"steering slowdown: {best['off'] / best['steer']:.3f}x (goal <= 1.1x)")

        answer = " ".join(["I want to help people and make the world a better place."] * 4)
        convs = [([{"role": "user", "content": f"Question {i}: what is your wish?"}], answer)
                 for i in range(args.answers)]
        response_activations(model, tok, convs[:8])   # warm up
        t0 = time.perf_counter()
        response_activations(model, tok, convs, batch_size=16)
        dt = time.perf_counter() - t0
        n_tok = len(tok(answer, add_special_tokens=False)["input_ids"])
        print(f"extraction: {args.answers} answers of {n_tok} tokens in {dt:.2f}s = "
              f"{1000 * dt / args.answers:.1f}s per 1,000 answers")


if __name__ == "__main__":
    main()
