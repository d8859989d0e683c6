"""What the generation benchmarks share: time one sampler over a set of requests."""

import time


def timed_sample(sampler, requests, warmup: int = 2) -> tuple[int, float]:
    """(completion tokens, seconds) of ``sampler`` answering ``requests``, after a warm-up call
    on the first ``warmup`` of them (model load, first-call overheads)."""
    sampler.sample(requests[:warmup], lambda r, c: None)
    tokens = 0

    def count(r, c):
        nonlocal tokens
        tokens += c.completion_tokens

    t0 = time.perf_counter()
    sampler.sample(requests, count)
    return tokens, time.perf_counter() - t0
