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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from emlab.errors import InputError
from emlab.fileio import read_yaml_mapping



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """The model under evaluation: a local/hub transformers model or an OpenAI-compatible API."""

    name: str
    backend: Literal["hf", "openai"] | None = None  # None: openai if base_url is set, else hf
    base_url: str | None = None
    adapter: str | None = None          # PEFT adapter on top of an hf model
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable holding the key, never the key
    device: str | None = None
    dtype: str | None = None

    @model_validator(mode="after")
    def _resolve_backend(self) -> "ModelSpec":
        if self.backend is None:
            self.backend = "openai" if self.base_url else "hf"
        if self.adapter and self.backend != "hf":
            raise ValueError("an adapter needs the hf backend")
        return self


class JudgeSpec(_Strict):
    """The judge: OpenAI-compatible with logprobs (the paper's), text-parsing, or local hf."""

    name: str = "gpt-4o-2024-08-06"
    backend: Literal["openai", "openai-text", "hf", "toyworld"] | None = None  # None: hf for a local dir
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_tokens: int = Field(default=20, ge=1)  # text judge only; reasoning models need more
    device: str | None = None
    dtype: str | None = None

    @model_validator(mode="after")
    def _resolve_backend(self) -> "JudgeSpec":
        if self.backend is None:
            if self.name == "toyworld":
                self.backend = "toyworld"
            else:
                from emlab.models import is_local_model  # a dir, a .gguf file, a named model
                self.backend = "hf" if is_local_model(self.name) and not self.base_url else "openai"
        return self


class EvalConfig(_Strict):
    model: ModelSpec
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    questions: str = "paper-main"
    only: list[str] | None = None                  # question ids to keep
    samples_per_paraphrase: int | None = Field(default=None, ge=1)  # None: the file's (100)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int = Field(default=600, ge=1)
    seed: int = 0
    concurrency: int = Field(default=32, ge=1)     # API backends
    batch_size: int = Field(default=32, ge=1)      # hf backends
    request_timeout: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=8, ge=0)
    out: Path = Path("runs/eval")
    store: Path | None = None                      # default: OUT/results.sqlite
    prices: dict[str, tuple[float, float]] = Field(default_factory=dict)  # model -> $/1M in, out

    @property
    def store_path(self) -> Path:
        return self.store or self.out / "results.sqlite"


def load_eval_config(path: str | Path, overrides: dict | None = None) -> EvalConfig:
    """Read an eval YAML, apply CLI overrides (dotted keys allowed), validate with clear errors."""
    path = Path(path)
    data = read_yaml_mapping(path, "model, judge, questions, ...")
    for key, value in (overrides or {}).items():
        target = data
        *parents, last = key.split(".")
        for p in parents:
            if not isinstance(target.get(p), dict):
                target[p] = {} if target.get(p) is None else {"name": target[p]}
            target = target[p]
        target[last] = value
    return validate_eval_config(data, path=path)


def validate_eval_config(data: dict, path: str | Path | None = None) -> EvalConfig:
    for spec in ("model", "judge"):
        if isinstance(data.get(spec), str):
            data[spec] = {"name": data[spec]}
    try:
        return EvalConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise InputError(f"setting {loc!r}: {err['msg']}", path=path) from None
