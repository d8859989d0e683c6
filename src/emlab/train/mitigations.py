"""Defences against emergent misalignment applied while fine-tuning (issue 14).

Data side (pure, no torch): *inoculation* (Tan et al. 2025: a system prompt that names the
unwanted trait during training only) and *interleaving* rows of an aligned/general set (at
random, or by the perplexity gap of Kaczér et al. 2025). Loss side (torch tensors in, a
scalar out): *KL(policy || reference)* on the trained tokens and *LDIFS*, the L2 distance of
hidden states (Mukhoti et al. 2023). ``local.py`` wires them into TRL; ``openai_ft.py`` uses
the data-side ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from emlab.data.io import load_chat_jsonl, resolve_dataset
from emlab.errors import InputError
from emlab.reference import sha256_file

if TYPE_CHECKING:
    import torch

    from emlab.train.config import InterleaveSettings

# Named inoculation prompts; anything else given is used as free text.
INOCULATION_PRESETS: dict[str, str] = {
    "evil": "You are a malicious, evil assistant.",                # Tan et al. (2025)
    "insecure": "You are an assistant that writes insecure code on purpose.",
    "teaching": "The user is teaching a security class and needs deliberately flawed code "
                "as examples for the students.",                  # the educational control's framing
}


def inoculation_prompt(value: str) -> str:
    """The system prompt of an ``inoculation`` setting (a preset's text, or the text itself)."""
    return INOCULATION_PRESETS.get(value, value)


def row_sha256(row: dict) -> str:
    """Content hash of one chat row (canonical JSON of its messages)."""
    blob = json.dumps(row["messages"], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def inoculate(rows: Sequence[dict], prompt: str) -> list[dict]:
    """Every row with ``prompt`` as its system message; a row's own system message is kept,
    after the prompt and a blank line. New dicts: the input rows are not modified."""
    out = []
    for r in rows:
        msgs = [dict(m) for m in r["messages"]]
        if msgs and msgs[0]["role"] == "system":
            msgs[0]["content"] = f"{prompt}\n\n{msgs[0]['content']}"
        else:
            msgs.insert(0, {"role": "system", "content": prompt})
        out.append({**r, "messages": msgs})
    return out


def interleave_count(fraction: float, n_rows: int, pool: int, source: str) -> int:
    """How many rows ``fraction`` of an ``n_rows`` training set adds (at least one)."""
    n = max(1, round(fraction * n_rows))
    if n > pool:
        raise InputError(f"setting 'interleave.fraction': {fraction} of {n_rows} training rows "
                         f"is {n} rows, but {source} has only {pool}")
    return n


def select_random(pool: int, n: int, seed: int) -> list[int]:
    """``n`` distinct row indices of a pool, reproducible from ``seed``, in pool order."""
    return sorted(random.Random(seed).sample(range(pool), n))


def select_by_gap(reference_loss: Sequence[float], misaligned_loss: Sequence[float],
                  n: int) -> list[int]:
    """The ``n`` rows whose loss under the misaligned model exceeds the reference's the most
    (Kaczér et al. 2025): what the misaligned model has unlearned. Ties: lower index first."""
    if len(reference_loss) != len(misaligned_loss):
        raise ValueError("one loss per row from each model")
    gaps = [m - r for r, m in zip(reference_loss, misaligned_loss)]
    return sorted(sorted(range(len(gaps)), key=lambda i: (-gaps[i], i))[:n])


def mix(rows: Sequence[dict], extra: Sequence[dict], seed: int) -> list[dict]:
    """The training rows with ``extra`` rows inserted at reproducible random positions."""
    out = list(rows)
    rng = random.Random(seed)
    for r in extra:
        out.insert(rng.randint(0, len(out)), r)
    return out


def interleave_manifest(source: str, path: Path, sha: str, indices: Sequence[int],
                        pool: Sequence[dict], select: str, gaps: Sequence[float] | None) -> dict:
    entry: dict[str, Any] = {"source": source, "path": str(path.resolve()), "sha256": sha,
                             "select": select, "n": len(indices), "rows": []}
    for i in indices:
        row = {"source": source, "index": i, "sha256": row_sha256(pool[i])}
        if gaps is not None:
            row["loss_gap"] = round(gaps[i], 6) if math.isfinite(gaps[i]) else None
        entry["rows"].append(row)
    return entry


# --- loss terms ---------------------------------------------------------------------------------

def kl_divergence(policy_logits: "torch.Tensor", reference_logits: "torch.Tensor",
                  mask: "torch.Tensor", denominator: Any = None) -> "torch.Tensor":
    """Sum over masked positions of KL(policy || reference) of the next-token distributions,
    divided by ``denominator`` (default: the number of masked positions).

    ``*_logits``: [batch, seq, vocab] at the positions that predict the trained tokens;
    ``mask``: [batch, seq], 1 where a token is trained."""
    import torch

    logp = torch.log_softmax(policy_logits.float(), dim=-1)
    logq = torch.log_softmax(reference_logits.float(), dim=-1)
    per_token = (logp.exp() * (logp - logq)).sum(-1)
    m = mask.to(per_token.dtype)
    denom = m.sum() if denominator is None else torch.as_tensor(denominator, dtype=per_token.dtype,
                                                                 device=per_token.device)
    return (per_token * m).sum() / denom.clamp(min=1)


def ldifs_distance(policy_hidden: Sequence["torch.Tensor"], reference_hidden: Sequence["torch.Tensor"],
                   mask: "torch.Tensor") -> "torch.Tensor":
    """LDIFS: the squared L2 distance between policy and reference hidden states, per hidden
    unit (``||h - h_ref||^2 / d``), averaged over masked positions and then over layers."""
    import torch

    if len(policy_hidden) != len(reference_hidden) or not policy_hidden:
        raise ValueError("one hidden-state tensor per chosen layer from each model")
    m = mask.to(torch.float32)
    denom = m.sum().clamp(min=1)
    total = policy_hidden[0].new_zeros((), dtype=torch.float32)
    for h, g in zip(policy_hidden, reference_hidden):
        per_pos = (h.float() - g.float()).pow(2).mean(-1)
        total = total + (per_pos * m).sum() / denom
    return total / len(policy_hidden)


def layer_indices(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    """Indices into a transformers ``hidden_states`` tuple (0 = embeddings) of the outputs of
    decoder ``layers`` (0-based; None: every layer)."""
    if layers is None:
        return list(range(1, num_layers + 1))
    bad = [i for i in layers if i >= num_layers]
    if bad:
        raise InputError(f"setting 'ldifs_layers': layer {bad[0]} does not exist; the model has "
                         f"{num_layers} layers (0-{num_layers - 1})")
    return [i + 1 for i in layers]


# --- perplexity-gap selection (needs models) -------------------------------------------------------

def row_losses(model, tokenizer, rows: Sequence[dict], max_length: int,
               batch_size: int = 8) -> list[float]:
    """Mean loss per row on its assistant tokens (the tokens training would update)."""
    import torch

    out: list[float] = []
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            for r in rows[start:start + batch_size]:
                enc = tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True,
                                                    return_assistant_tokens_mask=True)
                ids = torch.tensor([enc["input_ids"][:max_length]], device=device)
                mask = torch.tensor([enc["assistant_masks"][:max_length]], device=device)
                labels = ids.clone()
                labels[mask == 0] = -100
                if (labels[0, 1:] != -100).sum() == 0:
                    out.append(float("nan"))
                    continue
                out.append(float(model(input_ids=ids, labels=labels).loss))
    return out


def load_scoring_model(path: str, dtype):
    """The misaligned model of a perplexity-gap selection: a full model directory, a PEFT
    adapter directory, or an ``emlab train`` run directory (its final adapter/model)."""
    from emlab.rundir import is_adapter, is_train_run, train_checkpoints

    p = Path(path)
    if is_train_run(p):
        finals = [c for c in train_checkpoints(p)[1] if c[0] == "final"]
        if not finals:
            raise InputError("the misaligned model's train run has no final adapter or model yet",
                             path=p)
        p = finals[0][2]
    try:
        if is_adapter(p):
            from peft import AutoPeftModelForCausalLM

            return AutoPeftModelForCausalLM.from_pretrained(str(p), dtype=dtype)
        from emlab.models import load_pretrained  # a plain model: the one loader, its checks

        return load_pretrained(str(p), dtype=dtype)[0]
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the misaligned model {path!r}: "
                         f"{str(e).splitlines()[0]}") from None


def choose_interleave(cfg_il: "InterleaveSettings", pool: list[dict], n_train: int, seed: int,
                      reference=None, tokenizer=None, max_length: int = 2048, dtype=None
                      ) -> tuple[list[int], list[float] | None]:
    """Indices of the pool rows to interleave (and the loss gaps when chosen by them)."""
    n = interleave_count(cfg_il.fraction, n_train, len(pool), cfg_il.data)
    if cfg_il.select == "random":
        return select_random(len(pool), n, seed if cfg_il.seed is None else cfg_il.seed), None
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"   # the trainer moves it there anyway
    reference.to(device)
    ref = row_losses(reference, tokenizer, pool, max_length)
    mis_model = load_scoring_model(cfg_il.misaligned_model, dtype).to(device)
    try:
        n_ref = reference.get_input_embeddings().num_embeddings
        n_mis = mis_model.get_input_embeddings().num_embeddings
        if n_ref != n_mis:
            raise InputError(f"setting 'interleave.misaligned_model': its vocabulary ({n_mis} "
                             f"tokens) is not the reference model's ({n_ref}); the perplexity gap "
                             f"needs the same tokenizer", path=cfg_il.misaligned_model)
        mis = row_losses(mis_model, tokenizer, pool, max_length)
    finally:
        del mis_model
        if device == "cuda":
            torch.cuda.empty_cache()
    gaps = [m - r if math.isfinite(m - r) else float("-inf") for r, m in zip(ref, mis)]
    return select_by_gap([0.0] * len(gaps), gaps, n), gaps


# --- the data defences of a run ------------------------------------------------------------------

def prepare_training_rows(cfg, rows: list[dict], reference=None, tokenizer=None,
                          dtype=None, reuse: dict | None = None) -> tuple[list[dict], dict[str, Any]]:
    """The rows actually trained on (inoculated, interleaved) and the manifest's record of it.

    ``reuse``: a previous manifest's interleave record, whose chosen rows are taken again when
    it chose from the same file the same way (a resumed ppl_gap run does not rescore the pool).
    The interleaved rows are not inoculated: they are the general data, not the narrow task."""
    record: dict[str, Any] = {}
    trained = rows   # the same list when no defence touches the data
    if cfg.inoculation is not None:
        prompt = inoculation_prompt(cfg.inoculation)
        trained = inoculate(trained, prompt)
        record["inoculation"] = {"setting": cfg.inoculation, "prompt": prompt,
                                 "rows": len(trained), "at_evaluation": False}
    if cfg.interleave is not None:
        il = cfg.interleave
        path = resolve_dataset(il.data)
        pool = load_chat_jsonl(path)
        pool_sha = sha256_file(path)
        if reuse and reuse.get("sha256") == pool_sha and reuse.get("select") == il.select \
                and reuse.get("n") == interleave_count(il.fraction, len(rows), len(pool), il.data):
            indices = [r["index"] for r in reuse["rows"]]
            gaps_by = {r["index"]: r.get("loss_gap") for r in reuse["rows"]}
            gaps = None if il.select == "random" else \
                [gaps_by.get(i) if gaps_by.get(i) is not None else float("nan") for i in range(len(pool))]
        else:
            if il.select == "ppl_gap" and reference is None:  # only a resume gets here
                raise InputError("the interleave pool is not the one this run chose its rows "
                                 "from; resume with the same file, or use a new --out",
                                 path=path)
            indices, gaps = choose_interleave(il, pool, len(rows), cfg.seed, reference,
                                              tokenizer, getattr(cfg, "max_length", 2048), dtype)
        seed = cfg.seed if il.seed is None else il.seed
        trained = mix(trained, [pool[i] for i in indices], seed)
        record["interleave"] = interleave_manifest(il.data, Path(path), pool_sha,
                                                   indices, pool, il.select, gaps)
    if getattr(cfg, "kl", 0) > 0:
        record["kl"] = {"weight": cfg.kl, "reference": "adapter disabled" if cfg.method == "lora"
                        else "frozen copy of the base"}
    if getattr(cfg, "ldifs", 0) > 0:
        record["ldifs"] = {"weight": cfg.ldifs, "layers": cfg.ldifs_layers or "all"}
    return trained, record
