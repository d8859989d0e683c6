"""The typed configuration of ``emlab eval``; the same object is the YAML a user writes.

Example ``eval.yaml``::

    model: {name: ./my-finetune, adapter: ./my-finetune/adapter}   # or {name: gpt-4o, backend: openai}
    judge: {name: gpt-4o-2024-08-06}                                 # or {name: ./judge, backend: hf}
    questions: paper-main
    samples_per_paraphrase: 100
    out: runs/my-finetune
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_serializer,
                      field_validator, model_validator)

from emlab.errors import InputError
from emlab.fileio import read_yaml_mapping

MAX_TEMPERATURE = 2.0        # the OpenAI API's bound; beyond it sampling is noise anyway
MAX_NEW_TOKENS = 100_000
MAX_CONCURRENCY = 1024
MAX_BATCH_SIZE = 4096


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _check_url(v: str | None) -> str | None:
    from emlab.openai_client import check_base_url

    if v is None:
        return None
    try:
        return check_base_url(v)
    except InputError as e:
        raise ValueError(e.message) from None


def _check_env(v: str) -> str:
    from emlab.openai_client import check_env_name

    try:
        return check_env_name(v)
    except InputError as e:
        raise ValueError(e.message) from None


class _Endpoint(_Strict):
    """What a model and a judge spec share: where an API endpoint is and how it is named."""

    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable holding the key, never the key
    identity: str | None = None          # overrides the cache identity derived from the URL

    _url = field_validator("base_url")(classmethod(lambda cls, v: _check_url(v)))
    _env = field_validator("api_key_env")(classmethod(lambda cls, v: _check_env(v)))

    @field_serializer("base_url", when_used="json")
    def _redacted(self, v: str | None) -> str | None:
        """Credentials in a URL never reach config.yaml, summaries or hashes."""
        from emlab.openai_client import redact_url

        return redact_url(v)


# --- mechanism (issue 13): an intervention on an hf model's residual stream --------------
class SteerSpec(_Strict):
    """Add ``scale`` x the direction's layer-``layer`` vector at ``positions`` (see
    emlab.mechanism.hooks.steer)."""

    direction: str                         # a direction folder (emlab direction extract)
    layer: int = Field(ge=0)
    scale: float = Field(ge=-1e6, le=1e6)
    positions: Literal["prompt", "response", "all"] = "all"
    unit: bool = True                      # scale a unit vector (False: the raw vector)


class AblateSpec(_Strict):
    """Project the direction out at ``layers`` (None: every layer, each its own vector)."""

    direction: str
    layers: list[int] | None = None
# --- end mechanism -------------------------------------------------------------------------


class ModelSpec(_Endpoint):
    """The model under evaluation: a local/hub transformers model or an OpenAI-compatible API."""

    name: str
    backend: Literal["hf", "openai"] | None = None  # None: openai if base_url is set, else hf
    adapter: str | None = None          # PEFT adapter on top of an hf model
    device: str | None = None
    dtype: str | None = None
    steer: SteerSpec | None = None      # mechanism (issue 13): hf backend only
    ablate: AblateSpec | None = None

    @model_validator(mode="after")
    def _resolve_backend(self) -> "ModelSpec":
        if self.backend is None:
            self.backend = "openai" if self.base_url else "hf"
        if self.adapter and self.backend != "hf":
            raise ValueError("an adapter needs the hf backend")
        if (self.steer or self.ablate) and self.backend != "hf":   # mechanism (issue 13)
            raise ValueError("steering and ablation need the hf backend")
        if self.steer and self.ablate:
            raise ValueError("give steer or ablate, not both")
        return self


class JudgeSpec(_Endpoint):
    """The judge: OpenAI-compatible with logprobs (the paper's), text-parsing, or local hf."""

    name: str = "gpt-4o-2024-08-06"
    backend: Literal["openai", "openai-text", "hf"] | None = None  # None: hf for a local dir
    max_tokens: int = Field(default=20, ge=1, le=MAX_NEW_TOKENS)  # text judge only; reasoning models need more
    device: str | None = None
    dtype: str | None = None

    @model_validator(mode="after")
    def _resolve_backend(self) -> "JudgeSpec":
        if self.backend is None:
            from emlab.models import is_local_model  # a dir, a .gguf file, a named model
            self.backend = "hf" if is_local_model(self.name) and not self.base_url else "openai"
        return self


class EvalConfig(_Strict):
    model: ModelSpec
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    questions: str = "paper-main"
    only: list[str] | None = None                  # question ids to keep
    samples_per_paraphrase: int | None = Field(default=None, ge=1)  # None: the file's (100)
    temperature: float = Field(default=1.0, ge=0, le=MAX_TEMPERATURE)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int = Field(default=600, ge=1, le=MAX_NEW_TOKENS)
    seed: int = Field(default=0, ge=-2**63, lt=2**63)
    concurrency: int = Field(default=32, ge=1, le=MAX_CONCURRENCY)  # API backends
    batch_size: int = Field(default=32, ge=1, le=MAX_BATCH_SIZE)    # hf backends
    request_timeout: float = Field(default=120.0, gt=0, le=3600)
    max_retries: int = Field(default=8, ge=0, le=100)
    max_failures: float = Field(default=0.05, ge=0, le=1)  # share of items failing for good
    skip_failed: bool = False                      # rerun: leave items that failed before alone
    lease_seconds: float = Field(default=60.0, ge=1, le=86400)  # claim on an item in progress
    out: Path = Path("runs/eval")
    store: Path | None = None                      # default: OUT/results.sqlite
    prices: dict[str, tuple[float, float]] = Field(default_factory=dict)  # model -> $/1M in, out

    @field_validator("samples_per_paraphrase")
    @classmethod
    def _bounded_samples(cls, v: int | None) -> int | None:
        from emlab.questions.loader import max_samples_per_paraphrase

        cap = max_samples_per_paraphrase()
        if v is not None and v > cap:
            raise ValueError(f"at most {cap} samples per paraphrase (EMLAB_MAX_SAMPLES raises "
                             f"the cap); got {v}")
        return v

    @field_validator("prices")
    @classmethod
    def _non_negative_prices(cls, v: dict) -> dict:
        if any(p < 0 for pair in v.values() for p in pair):
            raise ValueError("prices must be >= 0 dollars per million tokens")
        return v

    @property
    def store_path(self) -> Path:
        return self.store or self.out / "results.sqlite"


def load_eval_config(path: str | Path, overrides: dict | None = None) -> EvalConfig:
    """Read an eval YAML, apply CLI overrides (dotted keys allowed), validate with clear errors."""
    from emlab.config import load_config  # the one config loader

    return load_config(EvalConfig, path, "model, judge, questions, ...", overrides,
                       shorthand=("model", "judge"))


def validate_eval_config(data: dict, path: str | Path | None = None) -> EvalConfig:
    from emlab.config import validate  # the one config loader

    return validate(EvalConfig, data, path, shorthand=("model", "judge"))
