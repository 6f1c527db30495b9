"""A bundle on disk: `manifest.json` plus the files it lists, each verified by sha256.

A bundle is data only (ONNX graphs, JSON, tokenizer.json): loading one never runs code.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict

    @property
    def pool(self) -> list[dict]:
        return self.manifest["pool"]

    @property
    def model_names(self) -> list[str]:
        return [m["name"] for m in self.pool]

    def file(self, name: str) -> Path:
        return self.path / name


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_bundle(path: str | os.PathLike, *, verify: bool = True) -> Bundle:
    """Read and check a bundle folder: schema version, presence and sha256 of every listed file."""
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle folder")
    if not mpath.is_file():
        raise BundleError(f"{path}: no {MANIFEST}; not an lr-onnx bundle (create one with lr-onnx export)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath}: malformed JSON ({str(e).splitlines()[0]})") from None
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        raise BundleError(f"{mpath}: missing schema_version")
    if version > SCHEMA_VERSION:
        raise BundleError(f"{path}: bundle schema version {version} is newer than this lr-onnx supports "
                          f"({SCHEMA_VERSION}); upgrade lr-onnx")
    for name, info in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise BundleError(f"{path}: {name} is missing; re-export the bundle or restore the file")
        if verify and sha256_file(f) != info["sha256"]:
            raise BundleError(f"{path}: {name} fails its sha256 check; re-export the bundle or restore the file")
    return Bundle(path, manifest)
