"""Load a local or hub transformers model (optionally with a PEFT adapter) the way users do."""

from __future__ import annotations

import hashlib
from pathlib import Path

from emlab.errors import InputError
from emlab.models import NAMED_MODELS, load_pretrained, resolve_model


def fingerprint(name_or_path: str, adapter: str | None = None) -> str:
    """A name for cache keys that changes when a local model's files change.

    For a local directory: its path plus the names, sizes and mtimes of its files, so retraining
    into the same folder does not reuse old answers; a .gguf file likewise; a named model: its
    package's version. A hub name is taken as it is.
    """
    parts = []
    for item in (name_or_path, adapter):
        if item is None:
            continue
        p = Path(item)
        if item in NAMED_MODELS:  # the GGUF the installed package version ships
            from importlib.metadata import PackageNotFoundError, version
            m = NAMED_MODELS[item]
            try:
                parts.append(f"{item}@{m.distribution}=={version(m.distribution)}")
            except PackageNotFoundError:
                parts.append(item)
        elif p.is_file():  # a .gguf file: imported by sha256, fingerprinted like a directory
            st = p.stat()
            parts.append(f"{p.resolve()}@{st.st_size}:{st.st_mtime_ns}")
        elif p.is_dir():
            h = hashlib.sha256()
            for f in sorted(p.iterdir()):
                if f.is_file():
                    st = f.stat()
                    h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
            parts.append(f"{p.resolve()}@{h.hexdigest()[:12]}")
        else:
            parts.append(item)
    return "+".join(parts)


def pick_device(device: str | None = None) -> str:
    import torch
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


_POOL: dict[tuple, dict] = {}


def load_model_and_tokenizer(name_or_path: str, adapter: str | None = None,
                             device: str | None = None, dtype: str | None = None):
    """``from_pretrained`` for tokenizer and model (left padding, eval mode), adapter applied.

    Models stay loaded for the process: a second sampler or judge on the same base reuses it,
    and adapters on one base are hot-swapped (``load_adapter`` + ``set_adapter``) instead of
    reloading the base for every checkpoint. A base used with and without adapters is loaded
    twice, because PEFT changes the base model it wraps.
    """
    device = pick_device(device)
    name_or_path = resolve_model(name_or_path)  # a named model or .gguf: its cached import
    key = (name_or_path, device, dtype, adapter is not None)
    entry = _POOL.get(key)
    if entry is None:
        model, tokenizer = _load_base(name_or_path, device, dtype)
        entry = _POOL[key] = {"model": model, "tokenizer": tokenizer, "adapters": {}}
    if adapter is None:
        return entry["model"], entry["tokenizer"]
    from peft import PeftModel
    name = entry["adapters"].get(adapter)
    try:
        if name is None:
            name = f"a{len(entry['adapters'])}"
            if isinstance(entry["model"], PeftModel):
                entry["model"].load_adapter(adapter, adapter_name=name)
            else:
                entry["model"] = PeftModel.from_pretrained(entry["model"], adapter,
                                                           adapter_name=name)
            entry["adapters"][adapter] = name
            entry["model"].to(device)
            entry["model"].eval()
    except (OSError, ValueError) as e:
        raise InputError(f"could not load a PEFT adapter from {adapter!r}: {e}") from e
    entry["model"].set_adapter(name)
    return entry["model"], entry["tokenizer"]


def _load_base(name_or_path: str, device: str, dtype: str | None):
    import torch

    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.startswith("cuda")
                                                       else torch.float32)
    model, tokenizer = load_pretrained(name_or_path, dtype=torch_dtype)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer


def render_chat(tokenizer, messages) -> str:
    """The prompt text a chat model expects, ending with the assistant's generation prompt."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                             tokenize=False)
    # A base model without a template: plain transcript.
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + "assistant: "
