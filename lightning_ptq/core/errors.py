"""The base of every error that a user's input causes (a setting, a file, a checkpoint, a model).

The command line prints such an error as one paragraph, its message, without a traceback: the
message names what is wrong and how to fix it. Anything else that escapes is a bug and keeps its
traceback.
"""
from __future__ import annotations

import difflib
from dataclasses import fields


class UserError(Exception):
    """A problem with what the user gave; the message says what and how to fix it."""


class ConfigError(UserError, ValueError):
    """A setting has a value that cannot work; the message names it and what is allowed."""


def check_keys(values: dict, cls: type, where: str) -> None:
    """ConfigError for the first key of ``values`` that the dataclass ``cls`` has no field for:
    the key as ``where.key``, the allowed keys and the closest of them."""
    allowed = [f.name for f in fields(cls)]
    for key in values:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            raise ConfigError(f"{where}.{key} is not a setting (allowed: {', '.join(allowed)})"
                              + (f"; did you mean {where}.{close[0]}?" if close else "."))
