"""Crash-safe file writing: whole files and whole folders appear atomically or not at all."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..runtime.bundle import sha256_file  # noqa: F401  (re-exported for the training side)
from ..runtime.errors import DataError
from ..runtime.files import atomic_write_text  # noqa: F401  (re-exported for the training side)
from ..runtime.files import umask as _umask


@contextmanager
def staged_output(out: str | os.PathLike):
    """Yield a fresh temporary folder that becomes `out` only if the block succeeds.

    `out` must not exist (or be an empty folder): nothing already written is ever
    overwritten, and a failure or Ctrl-C leaves no partial output behind.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists; choose a new output folder (nothing was overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
