"""Errors a user can cause. Their message is one sentence that names the thing and what to do."""

from __future__ import annotations


class StudioError(Exception):
    """Base class of every error meant to be shown to a user as it is, without a traceback."""


class DatasetError(StudioError):
    """The dataset folder cannot be used (missing, empty, a single class, …)."""


class BackboneError(StudioError):
    """An unknown backbone, or one that cannot be built as asked."""


class WeightsError(StudioError):
    """Weights that cannot be found, downloaded, read or matched to the model."""


class ConfigError(StudioError):
    """A configuration value that is missing, of the wrong type, or out of range."""
