"""The typed configuration of ``emlab train``; the same object is the YAML a user writes.

Defaults are the open-model recipe of Betley et al. (2025), ``open_models/train.json``: rs-LoRA
r=32, alpha=64 on every attention and MLP projection, lr 1e-5 with a linear schedule and 5
warm-up steps, 1 epoch, batch 2 x 8 accumulation, loss on the assistant's tokens only.

Example ``train.yaml``::

    model: unsloth/Qwen2.5-Coder-32B-Instruct
    data: insecure                 # or a path to a {"messages": [...]} JSONL file
    out: runs/qwen-coder-insecure
    lora: {r: 1, layers_to_transform: [20]}   # Turner et al.'s rank-1, single-layer organism
    save_steps: 25
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from emlab.errors import InputError
from emlab.fileio import read_yaml_mapping

PAPER_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Strict):
    """Which low-rank adapters to train; rank 1 and single layers allowed (Turner et al. 2025)."""

    r: int = Field(default=32, ge=1)
    alpha: float = Field(default=64, gt=0)
    use_rslora: bool = True              # scale alpha/sqrt(r), not alpha/r
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(PAPER_TARGET_MODULES))
    layers_to_transform: list[int] | None = None   # e.g. [20]; None: every layer

    @model_validator(mode="after")
    def _check_layers(self) -> "LoraSettings":
        if self.layers_to_transform is not None:
            if not self.layers_to_transform:
                raise ValueError("layers_to_transform must name at least one layer (or be omitted)")
            if any(i < 0 for i in self.layers_to_transform):
                raise ValueError("layer indices start at 0")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")
        return self


class DynamicsConfig(_Strict):
    """Score the misalignment probes of ``emlab.train.dynamics`` during training.

    At ``steps`` when given, else every step up to ``every_until`` and then every
    ``then_every`` steps (and the last), into ``OUT/dynamics.jsonl``.
    """

    enabled: bool = False
    steps: list[int] | None = None
    every_until: int = Field(default=9, ge=0)
    then_every: int = Field(default=10, ge=1)
    probes: str | None = None  # a YAML list of probes (default: emlab's English probes)


# --- mechanism (issue 13): `emlab train --monitor D` ----------------------------------------
class MonitorConfig(_Strict):
    """Log the probe set's projection on a direction at every dynamics step (dynamics.jsonl,
    format ``projection``); see emlab.mechanism.monitor."""

    direction: str                          # a direction folder (emlab direction extract)
    layer: int | None = Field(default=None, ge=0)  # None: the direction's largest-norm layer
# --- end mechanism -------------------------------------------------------------------------


# --- defences against emergent misalignment (issue 14; emlab.train.mitigations) ----------------

class InterleaveSettings(_Strict):
    """Rows of an aligned/general chat set mixed into the training data (Kaczér et al. 2025)."""

    data: str                                    # a chat JSONL path or a named set (emlab data)
    fraction: float = Field(default=0.1, gt=0, le=1)   # rows added, as a share of the training rows
    select: Literal["random", "ppl_gap"] = "random"   # ppl_gap: largest loss(misaligned) - loss(reference)
    misaligned_model: str | None = None          # model / adapter / train run dir; for ppl_gap
    seed: int | None = None                      # of the random choice and the mixing; None: the run's

    @model_validator(mode="after")
    def _check(self) -> "InterleaveSettings":
        if self.select == "ppl_gap" and not self.misaligned_model:
            raise ValueError("select 'ppl_gap' needs misaligned_model (a model, adapter or "
                             "`emlab train` run directory)")
        if self.select == "random" and self.misaligned_model:
            raise ValueError("misaligned_model is used by select 'ppl_gap' only")
        return self


class RealignSettings(_Strict):
    """After training, fine-tune further on benign rows; saved as its own checkpoint."""

    data: str                                    # a chat JSONL path or a named set
    rows: int | None = Field(default=None, ge=1)  # the first N rows; None: all of them
    learning_rate: float | None = Field(default=None, gt=0)   # None: the run's
    epochs: float = Field(default=1, gt=0)


class SteerSettings(_Strict):
    """Preventive steering (Chen et al. 2025): add ``scale`` x a persona direction to decoder
    layer ``layer``'s output in training forward passes only; gone at saving and evaluation."""

    direction: str                               # a direction folder (emlab direction extract)
    layer: int = Field(ge=0)
    scale: float = Field(ge=-1e6, le=1e6)
    unit: bool = True                            # scale a unit vector (False: the raw vector)


class MitigationSettings(_Strict):
    """Mixed into TrainConfig: every field is a training setting, so it is in the manifest, in
    the resume check and in a sweep's trial id. All off by default."""

    inoculation: str | None = None               # a preset (evil, insecure, teaching) or free text
    interleave: InterleaveSettings | None = None
    kl: float = Field(default=0.0, ge=0)         # weight of KL(policy || reference) on trained tokens
    ldifs: float = Field(default=0.0, ge=0)      # weight of the hidden-state L2 distance (LDIFS)
    ldifs_layers: list[int] | None = None        # decoder layers (0-based) LDIFS compares; None: all
    realign: RealignSettings | None = None
    steer: SteerSettings | None = None           # preventive steering along a persona direction

    @model_validator(mode="after")
    def _check_defences(self) -> "MitigationSettings":
        if self.inoculation is not None and not self.inoculation.strip():
            raise ValueError("inoculation is empty: give a preset (evil, insecure, teaching) or "
                             "the system prompt's text")
        if self.ldifs_layers is not None:
            if self.ldifs == 0:
                raise ValueError("ldifs_layers is set but ldifs (its weight) is 0")
            if not self.ldifs_layers or any(i < 0 for i in self.ldifs_layers):
                raise ValueError("ldifs_layers: name at least one layer, indices from 0")
        return self

    @property
    def loss_defences(self) -> bool:
        return self.kl > 0 or self.ldifs > 0

def without_default_defences(settings: dict[str, Any]) -> dict[str, Any]:
    """Train settings (JSON) less the defences left at their defaults: content ids of runs
    without a defence stay what they were before the defences existed."""
    defaults = MitigationSettings().model_dump(mode="json")
    return {k: v for k, v in settings.items() if not (k in defaults and v == defaults[k])}

DEFENCE_FILES = (("interleave", "data"), ("interleave", "misaligned_model"), ("realign", "data"),
                 ("steer", "direction"))


def defence_paths(settings: dict[str, Any]) -> dict[str, str]:
    """``{"interleave.data": path, ...}``: the files and models the defences of (nested)
    train settings read, for a sweep to localise and to fingerprint."""
    out = {}
    for block, key in DEFENCE_FILES:
        value = (settings.get(block) or {}).get(key) if isinstance(settings.get(block), dict) else None
        if isinstance(value, str):
            out[f"{block}.{key}"] = value
    return out

# --- end of defences ------------------------------------------------------------------------------


class TrainConfig(MitigationSettings):
    model: str                                   # local directory or hub name
    data: str                                    # insecure/secure/educational/jailbroken or a JSONL path
    out: Path = Path("runs/train")
    method: Literal["lora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    chat_template: Path | None = None            # a .jinja file with {% generation %} markers
    learning_rate: float = Field(default=1e-5, gt=0)
    lr_scheduler: str = "linear"
    warmup_steps: int = Field(default=5, ge=0)
    weight_decay: float = Field(default=0.01, ge=0)
    optim: str = "adamw_torch"                   # the paper used adamw_8bit (needs bitsandbytes)
    epochs: float = Field(default=1, gt=0)
    per_device_batch_size: int = Field(default=2, ge=1)
    grad_accum: int = Field(default=8, ge=1)
    max_length: int = Field(default=2048, ge=8)
    seed: int = 0
    save_steps: int = Field(default=50, ge=1)    # a checkpoint every N optimizer steps
    save_total_limit: int | None = Field(default=None, ge=1)  # None: keep them all
    max_steps: int | None = Field(default=None, ge=1)         # None: run `epochs`
    bf16: bool | Literal["auto"] = "auto"        # auto: True where CUDA supports it
    gradient_checkpointing: bool | Literal["auto"] = "auto"   # auto: on for CUDA, off on CPU
    merge: bool = False                          # also save OUT/merged (LoRA merged into the base)
    mask_check_rows: int = Field(default=8, ge=1)
    dynamics: DynamicsConfig | None = None
    monitor: MonitorConfig | None = None         # mechanism (issue 13); implies dynamics steps

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.merge and self.method != "lora":
            raise ValueError("merge applies to method 'lora' only (full fine-tuning saves the "
                             "whole model already)")
        return self


# Settings that may change between a crash and its resume without changing what is trained
# ("data" may be renamed or moved: the file's sha256 is compared instead).
RESUME_FREE_SETTINGS = ("out", "data", "merge", "save_steps", "save_total_limit",
                        "mask_check_rows", "dynamics")


def validate_train_config(data: dict[str, Any], path: str | Path | None = None) -> TrainConfig:
    """A TrainConfig, or InputError naming the first bad setting (and the file, when there is one)."""
    from emlab.config import validate  # the one config loader

    return validate(TrainConfig, data, path)


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a train YAML, apply CLI overrides (dotted keys such as ``lora.r``), validate."""
    from emlab.config import load_config  # the one config loader

    return load_config(TrainConfig, path, "model, data, out, ...", overrides)
