"""Crash-safe file writing, defined once for both sides: a file appears whole, through a temporary
sibling and a rename, or not at all. And the one check that a file a bundle names stays inside it."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import BundleError


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `path` via a temporary sibling and a rename, so readers never see half a file; the file gets the
    permissions a plain `open` would give it (mkstemp alone makes 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def staged_folder(out: str | os.PathLike[str], err: type[Exception]) -> Iterator[Path]:
    """Yield a fresh temporary folder that becomes `out` only if the block succeeds. `out` must not exist (or
    be an empty folder): nothing already written is overwritten, and a failure or Ctrl-C leaves nothing."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise err(f"{out}: already exists; choose a new output folder (nothing was overwritten)")
    if out.exists() and out.resolve() == Path.cwd().resolve():  # it would be removed and replaced under the shell
        raise err(f"{out}: is the current folder; name a new folder (the output is built beside it, then renamed)")
    nearest = next((p for p in out.parents if p.exists()), None)
    if nearest is not None and not nearest.is_dir():
        raise err(f"{out}: cannot be written ({nearest} is a file, not a folder)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:  # a read-only or virtual file system, a file where a folder should be
        raise err(f"{out}: cannot be written ({e.strerror or type(e).__name__})") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def inside(folder: Path, name: Any, entry: str) -> Path:
    """`folder / name`, refused unless it is a relative path that resolves inside `folder` (symlinks followed)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise BundleError(f"{folder}: manifest entry {entry} has an invalid file name {name!r}")
    if os.path.isabs(name) or ".." in Path(name).parts:
        raise BundleError(f"{folder}: manifest entry {entry} names {name!r}, outside the bundle folder")
    root = folder.resolve()
    target = (folder / name).resolve()
    if target != root and root not in target.parents:
        raise BundleError(f"{folder}: manifest entry {entry} names {name!r}, which resolves outside the bundle folder")
    return folder / name
