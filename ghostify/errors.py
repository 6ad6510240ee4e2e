"""Exceptions for mistakes a user can fix; the CLI shows their message without a traceback."""

from __future__ import annotations


class GhostifyError(Exception):
    """Base class: something the user asked for cannot be done as asked. The message says how to fix it."""


class ConfigError(GhostifyError, ValueError):
    """A conversion setting is out of range (ratio, dw_size, ...)."""


class PatternMatchError(GhostifyError, ValueError):
    """An include/exclude/ratio pattern matched no conv layer."""


class ModelSpecError(GhostifyError, ValueError):
    """A model name or `file.py:function` spec could not be resolved."""


class CheckpointError(GhostifyError, ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""
