"""A bundle on disk: `manifest.json` plus the files it lists, each verified by sha256.

A bundle is data only (ONNX graphs, JSON, tokenizer.json): loading one never runs code.
It is *closed*: the runtime opens a file of the bundle only through `Bundle.read`, which
accepts names listed in the manifest's files with a sha256, resolving inside the bundle
folder (symlinks followed), and checks the hash of the very bytes it returns. The
manifest is parsed and validated once (`runtime.manifest.Manifest`), so the rest of the
runtime reads typed attributes it can trust.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import BundleError
from .files import inside
from .manifest import MANIFEST, SCHEMA_VERSION, Manifest, PoolEntry
from .validate import loads_json

__all__ = ["Bundle", "MANIFEST", "SCHEMA_VERSION", "inside", "load_bundle", "self_contained", "sha256_file"]
MAX_MANIFEST_BYTES = 64 << 20
PARITY = "parity.json"  # export's check of the graphs against PyTorch (`export.bundle.parity`)


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    verify: bool = True

    @property
    def pool(self) -> tuple[PoolEntry, ...]:
        return self.manifest.pool

    @property
    def model_names(self) -> list[str]:
        return self.manifest.model_names

    @cached_property
    def digest(self) -> str:
        """sha256 of the manifest (which holds every file's sha256): names this bundle, pool included."""
        return hashlib.sha256(json.dumps(self.manifest.to_dict(), sort_keys=True).encode("utf-8")).hexdigest()

    @cached_property
    def space_digest(self) -> str:
        """sha256 of the retrieval space and the slices (the memory projection's hash and the profile centroids),
        which `refresh` keeps: a bundle and its refreshed successors share it, so their decision records mix."""
        m = self.manifest
        proj = m.files[m.memory.files["projection"]].sha256 if m.memory is not None else ""
        cent = json.dumps(m.profile_space.to_dict()["centroids"]).encode("utf-8")
        return hashlib.sha256(proj.encode() + cent).hexdigest()

    def summary(self) -> dict[str, Any]:
        """What `lr-onnx info --json` shows: identity, pool and prices, graphs with sizes, preprocessing, lambda,
        coverage and the memory's entry (its file list left out)."""
        m = self.manifest.to_dict()
        keep = ("name", "price_in_per_mtok", "price_out_per_mtok", "expected_cost_usd", "image_tokens", "output_tokens")
        return {
            "bundle": str(self.path),
            "digest": self.digest,
            "schema_version": m["schema_version"],
            "precision": m.get("precision"),
            "opset": m.get("opset"),
            "setting": m.get("setting"),
            "pool": [{k: p.get(k) for k in keep} for p in m["pool"]],
            "graphs": {n: {**g, "bytes": self.file(g["file"]).stat().st_size} for n, g in m["graphs"].items()},
            "preprocessing": m["preprocessing"],
            "reads_images": self.manifest.reads_images,
            "lambda": m["lambda"],
            "coverage": m.get("coverage"),
            "memory": {k: v for k, v in m["memory"].items() if k != "files"} if "memory" in m else None,
        }

    def file(self, name: str) -> Path:
        """The path of a listed file, inside the bundle folder (anything else is a `BundleError`)."""
        if name not in self.manifest.files:
            raise BundleError(f"{self.path}: {name} is not listed in {MANIFEST}'s files; the bundle is not closed")
        return inside(self.path, name, "files")

    def read(self, name: str) -> bytes:
        """The bytes of a listed file, hash-checked (when verification is on) on exactly these bytes."""
        path = self.file(name)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise BundleError(f"{self.path}: {name} cannot be read ({e.strerror or type(e).__name__})") from None
        if self.verify and hashlib.sha256(data).hexdigest() != self.manifest.files[name].sha256:
            raise BundleError(f"{self.path}: {name} fails its sha256 check; re-export the bundle or restore the file")
        return data

    def read_json(self, name: str) -> Any:
        return loads_json(self.read(name), f"{self.path / name}", err=BundleError)

    def parity_failure(self) -> str | None:
        """Why the bundle failed its export check (`parity.json`, written by `lr-onnx export`), or None if it passed
        or holds no record. `export` says so and exits 1 but leaves the bundle for inspection (int8-full does, by
        design); a router loaded from it must say so too, not route in silence."""
        if PARITY not in self.manifest.files:
            return None
        rec = self.read_json(PARITY)
        if not isinstance(rec, dict) or rec.get("passed") is not False:
            return None
        held, bars = rec.get("held_out"), rec.get("bars")
        agree = held.get("decision_agreement_lambda0") if isinstance(held, dict) else None
        bar = bars.get("agreement") if isinstance(bars, dict) else None
        numbers = isinstance(agree, (int, float)) and isinstance(bar, (int, float))
        why = f": decision agreement {agree:.1%} at lambda 0, the bar is {bar:.0%}" if numbers else ""
        return (
            f"{self.path}: this bundle failed its export parity check{why} ({PARITY}); its decisions may differ "
            f"from the trained router's"
        )


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_bundle(path: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
    """Read and check a bundle folder: the manifest's shape and numbers, the closed file list, every sha256."""
    if isinstance(path, str) and not path.strip():
        raise BundleError("bundle path is empty")
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle folder")
    if not mpath.is_file():
        raise BundleError(f"{path}: no {MANIFEST}; not an lr-onnx bundle (create one with lr-onnx export)")
    try:
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{mpath}: larger than {MAX_MANIFEST_BYTES >> 20} MB; not an lr-onnx manifest")
        raw = mpath.read_bytes()
    except OSError as e:
        raise BundleError(f"{mpath}: cannot be read ({e.strerror or type(e).__name__})") from None
    manifest = Manifest.from_dict(loads_json(raw, str(mpath), err=BundleError), path)
    for name, entry in manifest.files.items():
        f = inside(path, name, f"files[{name!r}]")
        if not f.is_file():
            raise BundleError(f"{path}: {name} is missing; re-export the bundle or restore the file")
        if verify and sha256_file(f) != entry.sha256:
            raise BundleError(f"{path}: {name} fails its sha256 check; re-export the bundle or restore the file")
    return Bundle(path, manifest, verify)


def self_contained(graph: bytes, folder: str | os.PathLike[str], file: str) -> None:
    """A graph that refers to external data would make ONNX Runtime read a file outside the hash gate."""
    from .onnx_proto import ProtoError, external_data

    try:
        refs = external_data(graph)
    except ProtoError as e:
        raise BundleError(f"{folder}: {file} is not a valid ONNX graph ({e})") from None
    if refs:
        named = ", ".join(repr(r) for r in refs if r) or "an unnamed file"
        raise BundleError(
            f"{folder}: {file} keeps tensors as external data ({named}); a bundle's graphs must be "
            f"self-contained (every file the runtime reads is listed and hashed)"
        )
