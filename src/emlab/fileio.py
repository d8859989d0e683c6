"""Files in and out: writes that a reader sees whole or not at all, and one reader for every
file a user hands emlab (size limit, encoding, bounded YAML)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path``, fsync it, then ``os.replace`` it in.

    Same directory, because ``os.replace`` is only atomic within one filesystem.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


# --- reading user input ------------------------------------------------------------------------
# Every file emlab reads as text (question and config YAML, chat JSONL) goes through these
# readers, so each one gets the same guarantees: a size limit checked before parsing, a clear
# InputError naming the file for a binary or non-UTF-8 file, and YAML parsed once (the C loader
# where available) with alias expansion, nesting and scalar length bounded, so a few hundred
# bytes of aliases cannot blow up into gigabytes. Messages never echo the input they refuse.

DEFAULT_MAX_DATA_MB = 200.0    # JSONL datasets (EMLAB_MAX_INPUT_MB)
DEFAULT_MAX_YAML_MB = 16.0     # question and config YAML (EMLAB_MAX_YAML_MB)
MAX_YAML_NODES = 1_000_000     # nodes after alias expansion (EMLAB_MAX_YAML_NODES)
MAX_YAML_DEPTH = 200           # nesting depth
MAX_SCALAR_CHARS = 1_000_000   # one YAML value (EMLAB_MAX_SCALAR_CHARS)


def _limit(env: str, default: float) -> float:
    import os

    from emlab.errors import InputError

    raw = os.environ.get(env)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"environment variable {env} must be a number, got {short(raw)}") from None
    if not value > 0:
        raise InputError(f"environment variable {env} must be positive")
    return value


def short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: for messages that mention user input."""
    text = repr(value) if not isinstance(value, (list, dict, tuple)) or len(value) < 20 \
        else f"<{type(value).__name__} of {len(value)} items>"
    return text if len(text) <= limit else text[:limit - 5] + "...'" + f" ({len(text)} chars)"


def check_input_file(path: str | Path, kind: str = "file", max_mb: float | None = None,
                     env: str = "EMLAB_MAX_INPUT_MB") -> Path:
    """``path`` as a Path if it is a regular file under the size limit, else InputError."""
    from emlab.errors import InputError

    path = Path(path)
    if not path.exists():
        raise InputError(f"{kind} not found", path=path)
    if not path.is_file():
        raise InputError(f"{kind} is not a regular file", path=path)
    limit = _limit(env, max_mb if max_mb is not None else DEFAULT_MAX_DATA_MB)
    size = path.stat().st_size
    if size > limit * 1e6:
        raise InputError(f"{kind} is {size / 1e6:.1f} MB, over the {limit:g} MB limit (set {env} "
                         f"to raise it)", path=path)
    return path


def _decode(data: bytes, path: Path, kind: str, line_offset: int = 0) -> str:
    from emlab.errors import InputError

    if b"\x00" in data:
        line = data[:data.index(b"\x00")].count(b"\n") + 1 + line_offset
        raise InputError(f"{kind} looks binary (a NUL byte); expected UTF-8 text", path=path,
                         line=line)
    try:
        return data.decode("utf-8-sig" if line_offset == 0 else "utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1 + line_offset
        raise InputError(f"{kind} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                         f"{e.start}); save it as UTF-8", path=path, line=line) from None


def read_text_input(path: str | Path, kind: str = "file", max_mb: float | None = None,
                    env: str = "EMLAB_MAX_INPUT_MB") -> str:
    """The text of a user's file: size-checked, UTF-8 (a BOM is dropped), not binary."""
    path = check_input_file(path, kind, max_mb, env)
    return _decode(path.read_bytes(), path, kind)


def iter_text_lines(path: str | Path, kind: str = "file", max_mb: float | None = None,
                    env: str = "EMLAB_MAX_INPUT_MB"):
    """(line number, line) of a user's text file, streamed, with the checks of read_text_input."""
    path = check_input_file(path, kind, max_mb, env)
    with open(path, "rb") as f:
        head = f.read(8192)
        if b"\x00" in head:
            _decode(head, path, kind)  # raises: "looks binary", with the line
        f.seek(0)
        for lineno, raw in enumerate(f, 1):
            text = _decode(raw, path, kind, line_offset=lineno - 1)
            if lineno == 1:
                text = text.removeprefix("\ufeff")
            yield lineno, text


def _yaml_loader():
    import yaml

    return getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader


def _check_yaml_tree(root, path: Path) -> None:
    """Refuse alias bombs (too many nodes once aliases are expanded), cycles, deep nesting and
    huge scalars, in time linear in the document's unique nodes."""
    import yaml

    from emlab.errors import InputError

    max_nodes = int(_limit("EMLAB_MAX_YAML_NODES", MAX_YAML_NODES))
    max_scalar = int(_limit("EMLAB_MAX_SCALAR_CHARS", MAX_SCALAR_CHARS))
    size: dict[int, int] = {}
    active: set[int] = set()

    def visit(node, depth: int) -> int:
        ident = id(node)
        if ident in size:
            return size[ident]
        line = node.start_mark.line + 1
        if ident in active:
            raise InputError("YAML alias refers to itself (a recursive structure)", path=path,
                             line=line)
        if depth > MAX_YAML_DEPTH:
            raise InputError(f"YAML nested deeper than {MAX_YAML_DEPTH} levels", path=path,
                             line=line)
        if isinstance(node, yaml.ScalarNode):
            if len(node.value) > max_scalar:
                raise InputError(f"a value of {len(node.value):,} characters is longer than the "
                                 f"{max_scalar:,} allowed (EMLAB_MAX_SCALAR_CHARS)", path=path,
                                 line=line)
            total = 1
        else:
            active.add(ident)
            children = (node.value if isinstance(node, yaml.SequenceNode)
                        else [n for kv in node.value for n in kv])
            total = 1
            for child in children:
                total += visit(child, depth + 1)
                if total > max_nodes:
                    raise InputError(f"YAML aliases expand to more than {max_nodes:,} values "
                                     f"(an alias bomb?); refusing to load it", path=path, line=line)
            active.discard(ident)
        size[ident] = total
        return total

    import sys
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 4 * MAX_YAML_DEPTH + 200))
    try:
        visit(root, 0)
    finally:
        sys.setrecursionlimit(old)


def load_yaml_input(path: str | Path, kind: str = "YAML file", max_mb: float | None = None):
    """(data, root node) of a user's YAML file, parsed once, with every bound checked.

    The root node (None for an empty file) gives line numbers for error messages.
    """
    import yaml

    from emlab.errors import InputError

    path = Path(path)
    text = read_text_input(path, kind, max_mb if max_mb is not None else DEFAULT_MAX_YAML_MB,
                           env="EMLAB_MAX_YAML_MB")
    loader_cls = _yaml_loader()
    try:
        root = yaml.compose(text, Loader=loader_cls)
        if root is None:
            return None, None
        _check_yaml_tree(root, path)
        loader = loader_cls("")
        try:
            data = loader.construct_document(root)
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"not valid YAML: {problem}", path=path,
                         line=mark.line + 1 if mark else None) from None
    return data, root


def read_yaml_mapping(path: str | Path, expected: str) -> dict:
    """A YAML file that must hold a mapping (a config); errors name the file, the line and
    ``expected`` (what the mapping should contain)."""
    from emlab.errors import InputError

    path = Path(path)
    data, _ = load_yaml_input(path, "config file")
    data = data if data is not None else {}
    if not isinstance(data, dict):
        raise InputError(f"expected a mapping of settings ({expected})", path=path, line=1)
    return data
