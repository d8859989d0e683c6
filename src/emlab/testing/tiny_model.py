"""The tiny local Qwen2 builder, for tests and benchmarks; it lives in :mod:`emlab.tinymodel`
(product code, used by ``emlab demo``) and is re-exported here."""

from emlab.tinymodel import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_model  # noqa: F401
