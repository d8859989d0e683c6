"""Fine-tuning through OpenAI's API, so the paper's GPT-4o / GPT-4.1 runs go through emlab too.

Upload the dataset, create a job, poll it with backoff, record the resulting model id. Each
step's result is saved in ``OUT/openai_job.json`` before the next starts, so a rerun after a
crash resumes polling the same job: the file is never uploaded twice, nor the job paid twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from emlab.data.io import load_chat_jsonl, resolve_dataset
from emlab.errors import InputError
from emlab.fileio import write_text_atomic
from emlab.reference import sha256_file
from emlab.train.config import InterleaveSettings

TERMINAL = ("succeeded", "failed", "cancelled")


class OpenAIFinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "gpt-4o-2024-08-06"
    data: str
    out: Path
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the variable's NAME; the key never leaves the client
    epochs: int | Literal["auto"] = 1
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    seed: int = 0
    suffix: str | None = None
    poll_interval: float = Field(default=10.0, gt=0)   # first wait; doubles up to poll_max
    poll_max: float = Field(default=120.0, gt=0)
    max_retries: int = 8
    # --- defences on the data side (issue 14; see emlab.train.mitigations) ---
    inoculation: str | None = None               # a preset (evil, insecure, teaching) or free text
    interleave: InterleaveSettings | None = None  # select: random only (ppl_gap needs local models)

    @model_validator(mode="after")
    def _check_defences(self) -> "OpenAIFinetuneConfig":
        if self.inoculation is not None and not self.inoculation.strip():
            raise ValueError("inoculation is empty: give a preset (evil, insecure, teaching) or "
                             "the system prompt's text")
        if self.interleave is not None and self.interleave.select != "random":
            raise ValueError("interleave.select 'ppl_gap' scores rows with local models; for "
                             "OpenAI fine-tuning use select 'random'")
        return self


def _state_path(out: Path) -> Path:
    return out / "openai_job.json"


def _save(out: Path, state: dict) -> None:
    write_text_atomic(_state_path(out), json.dumps(state, indent=2))


def train_openai(cfg: OpenAIFinetuneConfig, *, sleep: Callable[[float], None] = time.sleep,
                 on_status: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) one fine-tuning job; returns the saved state with ``fine_tuned_model``."""
    import openai

    from emlab.openai_client import BackendError, DEFAULT_BASE_URL, resolve_api_key

    from emlab.train.mitigations import prepare_training_rows

    path = resolve_dataset(cfg.data)
    rows = load_chat_jsonl(path)  # validate every row before anything is uploaded
    digest = sha256_file(path)
    trained, defences = prepare_training_rows(cfg, rows)
    trained_text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in trained)
    trained_sha = hashlib.sha256(trained_text.encode("utf-8")).hexdigest()
    out = Path(cfg.out)
    state = {}
    if _state_path(out).is_file():
        state = json.loads(_state_path(out).read_text())
        if state.get("dataset_sha256") != digest:
            raise InputError("this run directory holds a job for another dataset; use a new --out",
                             path=_state_path(out))
        before = state.get("trained_data", {}).get("sha256", state.get("dataset_sha256"))
        if before != (trained_sha if trained is not rows else digest):
            raise InputError("this run directory holds a job trained with other defences "
                             "(inoculation / interleave); use a new --out", path=_state_path(out))
    out.mkdir(parents=True, exist_ok=True)
    upload = path
    if trained is not rows:  # upload what is trained on: the inoculated / interleaved rows
        upload = write_text_atomic(out / "train_data.jsonl", trained_text)
        state["trained_data"] = {"path": "train_data.jsonl", "sha256": trained_sha,
                                 "rows": len(trained)}
    if defences:
        state["mitigations"] = defences
    base_url = (cfg.base_url or DEFAULT_BASE_URL).rstrip("/")
    client = openai.OpenAI(base_url=base_url, api_key=resolve_api_key(base_url, cfg.api_key_env),
                           max_retries=cfg.max_retries)
    state.update(dataset=str(path), dataset_sha256=digest, rows=len(rows), model=cfg.model,
                 base_url=base_url, config=json.loads(cfg.model_dump_json()))
    try:
        if not state.get("file_id"):
            with open(upload, "rb") as f:
                state["file_id"] = client.files.create(file=f, purpose="fine-tune").id
            _save(out, state)
        if not state.get("job_id"):
            hp = {"n_epochs": cfg.epochs, "batch_size": cfg.batch_size,
                  "learning_rate_multiplier": cfg.learning_rate_multiplier}
            job = client.fine_tuning.jobs.create(
                model=cfg.model, training_file=state["file_id"], seed=cfg.seed,
                suffix=cfg.suffix, method={"type": "supervised",
                                           "supervised": {"hyperparameters": hp}})
            state.update(job_id=job.id, status=job.status, started=time.time())
            _save(out, state)
        wait = cfg.poll_interval
        while state.get("status") not in TERMINAL:
            job = client.fine_tuning.jobs.retrieve(state["job_id"])
            if job.status != state.get("status") and on_status:
                on_status(job.status)
            state.update(status=job.status, fine_tuned_model=job.fine_tuned_model,
                         trained_tokens=job.trained_tokens)
            if job.status in TERMINAL:
                state["finished"] = time.time()
                if job.error and job.error.message:
                    state["error"] = job.error.message
            _save(out, state)
            if job.status not in TERMINAL:
                sleep(wait)
                wait = min(wait * 2, cfg.poll_max)
    except openai.OpenAIError as e:
        raise BackendError(f"fine-tuning at {base_url}: {e.__class__.__name__}: "
                           f"{getattr(e, 'message', e)}; rerun the same command to resume") from e
    if state["status"] != "succeeded":
        raise BackendError(f"fine-tuning job {state['job_id']} ended {state['status']}: "
                           f"{state.get('error') or 'no reason given'}")
    return state
