"""Crash-safe file writing: whole files and whole folders appear atomically or not at all."""

from __future__ import annotations

import os

from ..runtime.bundle import sha256_file  # noqa: F401  (re-exported for the training side)
from ..runtime.errors import DataError
from ..runtime.files import atomic_write_text  # noqa: F401  (re-exported for the training side)
from ..runtime.files import staged_folder


def staged_output(out: str | os.PathLike):
    """`runtime.files.staged_folder` with the training side's error: a fresh temporary folder that becomes
    `out` only if the block succeeds; `out` must not exist (or be empty)."""
    return staged_folder(out, DataError)
