"""The user-facing error types: one base, so the CLI (and any caller) can tell a problem with the
input -- a bad file, an unknown option, a missing experiment -- from a bug or an exhausted machine,
whose traceback must stay visible.

Each subclass also derives from the built-in it replaces, so ``except ValueError`` keeps working.
"""
from __future__ import annotations

__all__ = ["ElasticDenserError", "InvalidInputError", "MissingFileError", "StateError"]


class ElasticDenserError(Exception):
    """Base of every error whose message is written for the user (the CLI prints it, exit 2)."""


class InvalidInputError(ElasticDenserError, ValueError):
    """A value, file content, option or configuration that cannot be used as given."""


class MissingFileError(ElasticDenserError, FileNotFoundError):
    """A file or directory the call needs does not exist."""


class StateError(ElasticDenserError, RuntimeError):
    """On-disk state that does not fit together (a stale cache, a half-written experiment), or a
    missing optional dependency."""
