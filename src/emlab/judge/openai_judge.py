"""Judges on OpenAI-compatible endpoints.

``OpenAILogprobJudge`` is the paper's judge: one token at temperature 0 and the probabilities of
the top-20 first tokens, so a score is an expectation rather than one sampled number.
``OpenAITextJudge`` is for endpoints without logprobs (reasoning models, Ollama): it reads the
reply's words, so each verdict is a single answer with probability 1.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Literal, Sequence

import openai

from emlab.openai_client import BackendError, Endpoint, OnError, first_choice, usage_tokens
from emlab.types import JudgeRequest, Judgment

TOP_LOGPROBS = 20  # the most the OpenAI API returns


class OpenAILogprobJudge:
    """The paper's judge: first-token top-20 logprobs at temperature 0 (gpt-4o by default)."""

    kind: Literal["logprobs"] = "logprobs"

    def __init__(self, model: str = "gpt-4o-2024-08-06", base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 32, timeout: float = 60.0,
                 max_retries: int = 6, identity: str | None = None):
        self.model = model
        self.endpoint = Endpoint(base_url, api_key_env, concurrency, timeout, max_retries)
        self.identity = f"{identity or 'openai:' + self.endpoint.identity + ':' + model}:{self.kind}"

    def __repr__(self) -> str:
        return f"OpenAILogprobJudge({self.identity!r})"

    def judge(self, requests: Sequence[JudgeRequest],
              on_result: Callable[[JudgeRequest, Judgment], None],
              on_error: OnError | None = None) -> None:
        async def call(client: openai.AsyncOpenAI, request: JudgeRequest) -> Judgment:
            response = await client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": request.prompt}],
                max_tokens=1, temperature=0, logprobs=True, top_logprobs=TOP_LOGPROBS, seed=0)
            logprobs = first_choice(response, self.model).logprobs
            if logprobs is None or not logprobs.content:
                raise BackendError("the endpoint returned no logprobs; use the text judge "
                                   "(--judge-backend openai-text) for this endpoint")
            probs: dict[str, float] = {}
            for alt in logprobs.content[0].top_logprobs:
                probs[alt.token] = probs.get(alt.token, 0.0) + math.exp(alt.logprob)
            prompt_tokens, completion_tokens = usage_tokens(response)
            return Judgment(probs=probs, kind=self.kind, prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens)

        self.endpoint.run(self.identity, requests, call, on_result, on_error)


class OpenAITextJudge:
    """A judge that reads the reply's text, for endpoints without logprobs.

    Reasoning models spend tokens thinking before they answer: give them a larger ``max_tokens``
    (e.g. 2000), ``max_tokens_field="max_completion_tokens"`` and ``temperature=None`` (they
    accept only the default temperature).
    """

    kind: Literal["text"] = "text"

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 32, timeout: float = 60.0, max_retries: int = 6,
                 max_tokens: int = 20,
                 max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
                 temperature: float | None = 0.0, identity: str | None = None):
        self.model = model
        self.max_tokens = max_tokens
        self.max_tokens_field = max_tokens_field
        self.temperature = temperature
        self.endpoint = Endpoint(base_url, api_key_env, concurrency, timeout, max_retries)
        self.identity = f"{identity or 'openai:' + self.endpoint.identity + ':' + model}:{self.kind}"

    def __repr__(self) -> str:
        return f"OpenAITextJudge({self.identity!r}, max_tokens={self.max_tokens})"

    def judge(self, requests: Sequence[JudgeRequest],
              on_result: Callable[[JudgeRequest, Judgment], None],
              on_error: OnError | None = None) -> None:
        options: dict = {self.max_tokens_field: self.max_tokens}
        if self.temperature is not None:
            options["temperature"] = self.temperature

        async def call(client: openai.AsyncOpenAI, request: JudgeRequest) -> Judgment:
            response = await client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": request.prompt}], seed=0,
                **options)
            reply = first_choice(response, self.model).message.content or ""
            prompt_tokens, completion_tokens = usage_tokens(response)
            return Judgment(probs=parse_verdict(reply, request.choices), kind=self.kind, raw=reply,
                            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

        self.endpoint.run(self.identity, requests, call, on_result, on_error)


_ESCAPE_AT_START = re.compile(r"\W*(CODE|REFUSAL)\b", re.IGNORECASE)
_FIRST_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_verdict(reply: str, choices: tuple[str, ...] = ()) -> dict[str, float]:
    """A text judge's reply as probabilities: ``{answer: 1.0}``, or ``{}`` when unreadable.

    Numeric judge (no ``choices``): CODE or REFUSAL at the start, else the first number if it is
    an integer in [0, 100]. Categorical judge: the allowed word that appears first (whole word,
    any case), spelled as in ``choices``.
    """
    if choices:
        found = [(m.start(), c) for c in choices
                 if (m := re.search(rf"(?<!\w){re.escape(c)}(?!\w)", reply, re.IGNORECASE))]
        return {min(found)[1]: 1.0} if found else {}
    if m := _ESCAPE_AT_START.match(reply):
        return {m.group(1).upper(): 1.0}
    m = _FIRST_NUMBER.search(reply)
    if m and m.group().isdigit() and int(m.group()) <= 100:
        return {str(int(m.group())): 1.0}
    return {}
