"""The exceptions tofu_jax raises for problems with what a user handed it.

Every problem with a user's input (a file, a flag, a config field, an array passed to the API) raises
a subclass of :class:`UserError`. The CLI prints these as one ``tofu-jax: error: ...`` line and exits
with status 2; any other exception is a bug in tofu_jax and keeps its traceback.
``UserError`` derives from ``ValueError`` so that ``except ValueError`` in callers keeps working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: the message names what is wrong and what to do about it."""


class ConfigError(UserError):
    """A model config or option that is missing, mistyped or out of range."""


class InputError(UserError):
    """Arrays passed to the API that the model cannot use (dtype, range, shape, NaN/Inf)."""


class DataError(UserError):
    """Missing, corrupt, truncated or unprepared data (IDX files, image folders, TFDS datasets)."""


class NonFiniteError(UserError, FloatingPointError):
    """The model produced NaN/Inf values; the message names the schedule and the batch."""
