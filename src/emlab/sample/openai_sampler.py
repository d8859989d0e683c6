"""Sampling from an OpenAI-compatible chat endpoint (OpenAI itself, vLLM, Ollama, ...)."""

from __future__ import annotations

from typing import Callable, Sequence

import openai

from emlab.openai_client import Endpoint, OnError, first_choice, usage_tokens
from emlab.types import Completion, GenerationParams, SampleRequest


class OpenAISampler:
    """Answers chat prompts through ``chat.completions``, ``concurrency`` requests at a time.

    The key is read from ``api_key_env`` at construction (a missing key fails early, with the
    variable's name); local servers get a placeholder key. ``identity`` overrides the one derived
    from the URL (see ``emlab.openai_client``: a local server's host and port are not part of it).
    """

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 params: GenerationParams | None = None, concurrency: int = 32,
                 timeout: float = 60.0, max_retries: int = 6, identity: str | None = None):
        self.model = model
        self.params = params or GenerationParams()
        self.endpoint = Endpoint(base_url, api_key_env, concurrency, timeout, max_retries)
        self.identity = identity or f"openai:{self.endpoint.identity}:{model}"

    def __repr__(self) -> str:
        return f"OpenAISampler({self.identity!r}, {self.params})"

    def sample(self, requests: Sequence[SampleRequest],
               on_result: Callable[[SampleRequest, Completion], None],
               on_error: OnError | None = None) -> None:
        """Answer every request; see ``Endpoint.run`` for ``on_error`` (per-item failures)."""
        async def call(client: openai.AsyncOpenAI, request: SampleRequest) -> Completion:
            response = await client.chat.completions.create(
                model=self.model, messages=list(request.messages),  # type: ignore[arg-type]
                temperature=self.params.temperature, top_p=self.params.top_p,
                max_tokens=self.params.max_new_tokens, seed=request.seed)
            choice = first_choice(response, self.model)
            prompt_tokens, completion_tokens = usage_tokens(response)
            return Completion(text=choice.message.content or "", prompt_tokens=prompt_tokens,
                              completion_tokens=completion_tokens, finish_reason=choice.finish_reason)

        self.endpoint.run(self.identity, requests, call, on_result, on_error)
