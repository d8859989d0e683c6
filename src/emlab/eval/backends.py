"""Build the sampler and judge a config names (imports stay lazy: torch only when needed)."""

from __future__ import annotations

from emlab.eval.config import EvalConfig
from emlab.types import GenerationParams, Judge, Sampler


def make_sampler(cfg: EvalConfig) -> Sampler:
    spec = cfg.model
    params = GenerationParams(temperature=cfg.temperature, top_p=cfg.top_p,
                              max_new_tokens=cfg.max_new_tokens)
    if spec.backend == "hf":
        from emlab.sample.hf_sampler import HFSampler
        sampler = HFSampler(spec.name, adapter=spec.adapter, params=params,
                            batch_size=cfg.batch_size, device=spec.device, dtype=spec.dtype)
        if spec.identity:  # a content identity (e.g. the toy world's): seeds independent of paths
            sampler.identity = "hf:" + spec.identity
        return sampler
    from emlab.sample.openai_sampler import OpenAISampler
    return OpenAISampler(spec.name, base_url=spec.base_url, api_key_env=spec.api_key_env,
                         params=params, concurrency=cfg.concurrency,
                         timeout=cfg.request_timeout, max_retries=cfg.max_retries,
                         identity=spec.identity)


def make_judge(cfg: EvalConfig) -> Judge:
    spec = cfg.judge
    if spec.backend == "hf":
        from emlab.judge.hf_judge import HFJudge
        return HFJudge(spec.name, batch_size=cfg.batch_size, device=spec.device, dtype=spec.dtype)
    from emlab.judge.openai_judge import OpenAILogprobJudge, OpenAITextJudge
    common = dict(base_url=spec.base_url, api_key_env=spec.api_key_env,
                  concurrency=cfg.concurrency, timeout=cfg.request_timeout,
                  max_retries=cfg.max_retries, identity=spec.identity)
    if spec.backend == "openai-text":
        return OpenAITextJudge(spec.name, max_tokens=spec.max_tokens, **common)
    return OpenAILogprobJudge(spec.name, **common)
