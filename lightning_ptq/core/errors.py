"""The base of every error that a user's input causes (a setting, a file, a checkpoint, a model).

The command line prints such an error as one paragraph, its message, without a traceback: the
message names what is wrong and how to fix it. Anything else that escapes is a bug and keeps its
traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave; the message says what and how to fix it."""


class ConfigError(UserError, ValueError):
    """A setting has a value that cannot work; the message names it and what is allowed."""
