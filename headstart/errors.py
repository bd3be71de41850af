"""Errors a user can act on: one line naming the file and the fix, never a traceback."""

from __future__ import annotations


class HeadstartError(Exception):
    """A problem with the user's input or environment. The CLI prints it as one line and exits 2."""


class DataError(HeadstartError):
    """The data cannot be used as given (empty, one class, unreadable, missing columns...)."""


class BackboneUnavailable(HeadstartError):
    """A backbone's weights cannot be had here (offline, missing package, bad path)."""


class BundleError(HeadstartError):
    """A model bundle is malformed, from a newer version, or unsafe to load."""
