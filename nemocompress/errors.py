"""Errors that nemocompress raises for bad input: each message names the problem and the fix."""

__all__ = ["NemocompressError", "UnsupportedModelError", "PlanError", "CheckpointError", "OutputError"]


class NemocompressError(Exception):
    """Base class: the CLI prints these as one clean line and exits non-zero."""


class UnsupportedModelError(NemocompressError):
    """The model family has no adapter."""


class PlanError(NemocompressError, ValueError):
    """A target or plan does not fit the model."""


class CheckpointError(NemocompressError):
    """A checkpoint on disk is missing, truncated or corrupt."""


class OutputError(NemocompressError):
    """The output location cannot be written safely."""
