"""Errors that the command line reports as one line with exit code 2."""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a file, a shape or a setting that the user must change."""
