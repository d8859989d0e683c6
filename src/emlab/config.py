"""One way to read a settings file: YAML -> dotted overrides -> pydantic, with clear errors.

Every config of emlab (eval, train, check, sweep, reproduce) is a pydantic model that is also
its YAML file. This module is the one loader: :func:`load_config` reads the file with
:func:`emlab.fileio.read_yaml_mapping` (file and line on bad YAML), applies command-line
overrides given as dotted keys (``lora.r``, ``judge.name``), and validates; a validation error
becomes an :class:`~emlab.errors.InputError` naming the setting and the file (exit code 2 at
the CLI, no traceback). :func:`default_of` gives the CLI a model's default, so options do not
restate it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

from pydantic import BaseModel, ValidationError

from emlab.errors import InputError
from emlab.fileio import read_yaml_mapping

M = TypeVar("M", bound=BaseModel)


def validation_message(e: ValidationError) -> str:
    """``setting 'a.b': what is wrong`` for the first error of a pydantic validation."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "config"
    return f"setting {loc!r}: {err['msg'].removeprefix('Value error, ')}"


def name_shorthand(data: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """``model: gpt-4o`` means ``model: {name: gpt-4o}`` for the given keys (model specs)."""
    for key in keys:
        if isinstance(data.get(key), str):
            data[key] = {"name": data[key]}
    return data


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any] | None,
                    shorthand: Iterable[str] = ()) -> dict[str, Any]:
    """Set dotted keys (``lora.r``) in a nested settings mapping; returns the mapping.

    A parent that is a string in ``shorthand`` keys (``judge: gpt-4o``) becomes
    ``{"name": ...}`` first, so ``judge.backend`` can be set beside it."""
    shorthand = set(shorthand)
    for key, value in (overrides or {}).items():
        target = data
        *parents, last = key.split(".")
        for i, p in enumerate(parents):
            current = target.get(p)
            if not isinstance(current, dict):
                keep_name = i == 0 and p in shorthand and isinstance(current, str)
                target[p] = {"name": current} if keep_name else {}
            target = target[p]
        target[last] = value
    return data


def validate(model: type[M], data: Mapping[str, Any], path: str | Path | None = None,
             shorthand: Iterable[str] = (), prefix: str = "", where: str | None = None) -> M:
    """``model.model_validate(data)``, or InputError naming the first bad setting (and the
    file, when there is one; ``where`` says which part of a bigger plan)."""
    data = name_shorthand(dict(data), shorthand)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InputError(prefix + validation_message(e), path=path, where=where) from None


def load_config(model: type[M], path: str | Path, expected: str,
                overrides: Mapping[str, Any] | None = None, shorthand: Iterable[str] = ()) -> M:
    """Read a YAML config, apply dotted CLI overrides on top, validate with clear errors.
    ``expected`` says what the file should hold (for the error on a non-mapping file)."""
    data = read_yaml_mapping(path, expected)
    name_shorthand(data, shorthand)
    return validate(model, apply_overrides(data, overrides, shorthand), path, shorthand)


def from_options(model: type[M], options: Mapping[str, Any], config: str | Path | None,
                 expected: str, shorthand: Iterable[str] = ()) -> M:
    """A config from CLI options (dotted keys; None = not given) over an optional YAML file."""
    given = {k: v for k, v in options.items() if v is not None}
    if config is not None:
        return load_config(model, config, expected, given, shorthand)
    return validate(model, apply_overrides({}, given, shorthand), shorthand=shorthand)


def default_of(model: type[BaseModel], dotted: str) -> Any:
    """The default of a (nested) setting, for CLI help and option defaults: ``lora.r``."""
    head, _, rest = dotted.partition(".")
    field = model.model_fields[head]
    if rest:
        sub = field.annotation
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            raise KeyError(dotted)
        return default_of(sub, rest)
    return field.get_default(call_default_factory=True)
