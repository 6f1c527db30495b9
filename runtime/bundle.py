"""A bundle on disk: `manifest.json` plus the files it lists, each verified by sha256.

A bundle is data only (ONNX graphs, JSON, tokenizer.json): loading one never runs code.
It is *closed*: the runtime opens a file of the bundle only through `Bundle.read`, which
accepts names listed in `manifest["files"]` with a sha256, resolving inside the bundle
folder (symlinks followed), and checks the hash of the very bytes it returns. The
manifest itself is validated here, once, so the rest of the runtime can trust its types.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .bounds import MAX_LAMBDA
from .costs import rule_spec
from .errors import BundleError
from .features import HAS_IMAGE_COL
from .memory import COLUMNS as MEMORY_COLUMNS, FILES as MEMORY_FILES, MAX_DIM as MEMORY_MAX_DIM, MAX_ROWS as MEMORY_MAX_ROWS
from .validate import integer, loads_json, number, text

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
GRAPHS = ("router", "image_encoder", "text_encoder")
MAX_MANIFEST_BYTES = 64 << 20
RESAMPLE_NAMES = ("bilinear", "bicubic", "nearest")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    verify: bool = True

    @property
    def pool(self) -> list[dict]:
        return self.manifest["pool"]

    @property
    def model_names(self) -> list[str]:
        return [m["name"] for m in self.pool]

    @property
    def digest(self) -> str:
        """sha256 of the manifest as loaded (which holds every file's sha256): names this bundle, pool included."""
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode("utf-8")).hexdigest()

    def summary(self) -> dict:
        """What `lr-onnx info --json` shows: identity, pool and prices, graphs with sizes, preprocessing, lambda,
        coverage and the memory's entry (its file list left out)."""
        m = self.manifest
        keep = ("name", "price_in_per_mtok", "price_out_per_mtok", "expected_cost_usd", "image_tokens", "output_tokens")
        return {"bundle": str(self.path), "digest": self.digest, "schema_version": m["schema_version"],
                "precision": m.get("precision"), "opset": m.get("opset"), "setting": m.get("setting"),
                "pool": [{k: p.get(k) for k in keep} for p in m["pool"]],
                "graphs": {n: {**g, "bytes": self.file(g["file"]).stat().st_size} for n, g in m["graphs"].items()},
                "preprocessing": m["preprocessing"], "lambda": m.get("lambda", {}), "coverage": m.get("coverage"),
                "memory": {k: v for k, v in m["memory"].items() if k != "files"} if "memory" in m else None}

    def file(self, name: str) -> Path:
        """The path of a listed file, inside the bundle folder (anything else is a `BundleError`)."""
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.path}: {name} is not listed in {MANIFEST}'s files; the bundle is not closed")
        return inside(self.path, name, "files")

    def read(self, name: str) -> bytes:
        """The bytes of a listed file, hash-checked (when verification is on) on exactly these bytes."""
        path = self.file(name)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise BundleError(f"{self.path}: {name} cannot be read ({e.strerror or type(e).__name__})") from None
        if self.verify and hashlib.sha256(data).hexdigest() != self.manifest["files"][name]["sha256"]:
            raise BundleError(f"{self.path}: {name} fails its sha256 check; re-export the bundle or restore the file")
        return data

    def read_json(self, name: str):
        return loads_json(self.read(name), f"{self.path / name}", err=BundleError)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inside(folder: Path, name, entry: str) -> Path:
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


def load_bundle(path: str | os.PathLike, *, verify: bool = True) -> Bundle:
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
    manifest = loads_json(raw, str(mpath), err=BundleError)
    validate_manifest(manifest, path)
    for name in manifest["files"]:
        f = inside(path, name, f"files[{name!r}]")
        if not f.is_file():
            raise BundleError(f"{path}: {name} is missing; re-export the bundle or restore the file")
        if verify and sha256_file(f) != manifest["files"][name]["sha256"]:
            raise BundleError(f"{path}: {name} fails its sha256 check; re-export the bundle or restore the file")
    return Bundle(path, manifest, verify)


def self_contained(graph: bytes, folder, file: str) -> None:
    """A graph that refers to external data would make ONNX Runtime read a file outside the hash gate."""
    from .onnx_proto import ProtoError, external_data

    try:
        refs = external_data(graph)
    except ProtoError as e:
        raise BundleError(f"{folder}: {file} is not a valid ONNX graph ({e})") from None
    if refs:
        named = ", ".join(repr(r) for r in refs if r) or "an unnamed file"
        raise BundleError(f"{folder}: {file} keeps tensors as external data ({named}); a bundle's graphs must be "
                          f"self-contained (every file the runtime reads is listed and hashed)")


# ----------------------------------------------------------------------------- manifest schema
def validate_manifest(m, path: Path) -> None:
    """Refuse, with one line naming the entry, any manifest the runtime could not route with safely."""
    where = f"{path / MANIFEST}"

    def need(obj, key, kind, ctx):
        if not isinstance(obj, dict) or key not in obj:
            raise BundleError(f"{where}: missing '{ctx}{key}'")
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            raise BundleError(f"{where}: '{ctx}{key}' must be {_KIND_NAMES.get(kind, 'of another type')}")
        return obj[key]

    def num(v, field, lo=0.0, hi=1e12):
        return number(v, f"{where}: {field}", lo=lo, hi=hi, err=BundleError)

    if not isinstance(m, dict):
        raise BundleError(f"{where}: expected a JSON object, got {type(m).__name__}")
    version = m.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleError(f"{where}: schema_version must be a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise BundleError(f"{path}: bundle schema version {version} is newer than this lr-onnx supports "
                          f"({SCHEMA_VERSION}); upgrade lr-onnx")

    files = need(m, "files", dict, "")
    if not files:
        raise BundleError(f"{where}: 'files' is empty; a bundle lists every file it holds with its sha256")
    for name, info in files.items():
        inside(path, name, f"files[{name!r}]")
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str) or not _HEX64.fullmatch(info["sha256"]):
            raise BundleError(f"{where}: files[{name!r}] needs a 'sha256' of 64 lowercase hex digits")

    graphs = need(m, "graphs", dict, "")
    for g in GRAPHS:
        entry = need(graphs, g, dict, "graphs.")
        fname = need(entry, "file", str, f"graphs.{g}.")
        inside(path, fname, f"graphs.{g}.file")
        if fname not in files:
            raise BundleError(f"{where}: graphs.{g}.file {fname!r} is not listed in 'files'; the bundle is not closed")

    pre = need(m, "preprocessing", dict, "")
    image = need(pre, "image", dict, "preprocessing.")
    integer(image.get("size"), f"{where}: preprocessing.image.size", lo=16, hi=2048, err=BundleError)
    if image.get("resample") not in RESAMPLE_NAMES:
        raise BundleError(f"{where}: preprocessing.image.resample must be one of {', '.join(RESAMPLE_NAMES)}, "
                          f"got {image.get('resample')!r}")
    for key, lo, hi in (("mean", -1e3, 1e3), ("std", 1e-6, 1e3), ("pad", 0, 255)):
        v = image.get(key)
        if not isinstance(v, list) or len(v) != 3:
            raise BundleError(f"{where}: preprocessing.image.{key} must be a list of 3 numbers")
        for x in v:
            (integer if key == "pad" else number)(x, f"{where}: preprocessing.image.{key}", lo=lo, hi=hi,  # type: ignore[operator,arg-type]
                                                  err=BundleError)
    integer(image.get("max_pixels", 1), f"{where}: preprocessing.image.max_pixels", lo=1, hi=1 << 40, err=BundleError)
    unknown = set(image) - {"size", "resample", "mean", "std", "pad", "max_pixels"}
    if unknown:
        raise BundleError(f"{where}: preprocessing.image has unknown keys {sorted(unknown)}")
    textspec = need(pre, "text", dict, "preprocessing.")
    integer(textspec.get("max_tokens"), f"{where}: preprocessing.text.max_tokens", lo=1, hi=4096, err=BundleError)
    tok = textspec.get("tokenizer_file", "tokenizer.json")
    inside(path, tok, "preprocessing.text.tokenizer_file")
    if tok not in files:
        raise BundleError(f"{where}: tokenizer {tok!r} is not listed in 'files'; the bundle is not closed")

    pool = need(m, "pool", list, "")
    if not pool:
        raise BundleError(f"{where}: 'pool' is empty")
    seen: set[str] = set()
    width = None
    for j, p in enumerate(pool):
        ctx = f"pool[{j}]."
        name = text(need(p, "name", str, ctx), f"{where}: {ctx}name", err=BundleError)
        if name in seen:
            raise BundleError(f"{where}: duplicate model name {name!r} in 'pool'")
        seen.add(name)
        num(p.get("expected_cost_usd"), f"{ctx}expected_cost_usd (model {name!r})", hi=1e6)
        num(p.get("cost_hat"), f"{ctx}cost_hat (model {name!r})", hi=MAX_LAMBDA)
        for key in ("price_in_per_mtok", "price_out_per_mtok"):
            if p.get(key) is not None:
                num(p[key], f"{ctx}{key} (model {name!r})", hi=1e6)
        if p.get("image_tokens") is not None:
            try:
                rule_spec(p["image_tokens"])
            except (ValueError, TypeError) as e:
                raise BundleError(f"{where}: {ctx}image_tokens (model {name!r}): {e}") from None
        if p.get("output_tokens") is not None:
            num(p["output_tokens"], f"{ctx}output_tokens (model {name!r})", hi=1e7)
        for key in ("profile", "raw_profile"):
            vec = need(p, key, list, ctx)
            for x in vec:
                num(x, f"{ctx}{key} (model {name!r})", lo=-1e9, hi=1e9)
        if width is None:
            width = len(p["profile"])
        if len(p["profile"]) != width or len(p["raw_profile"]) != width:
            raise BundleError(f"{where}: model {name!r} has a profile of another width than pool[0] ({width})")
    extra = _validate_memory(m, files, where, path)
    assert width is not None   # the pool is non-empty (checked above)
    dim = m.get("model_dim")
    if dim is not None and dim != width + 1 + extra:
        raise BundleError(f"{where}: profiles of width {width} do not match model_dim {dim!r} "
                          f"(expected {width + 1 + extra})")

    space = need(m, "profile_space", dict, "")
    cents = need(space, "centroids", list, "profile_space.")
    if not cents or not all(isinstance(c, list) and len(c) == len(cents[0]) and c for c in cents):
        raise BundleError(f"{where}: profile_space.centroids must be a non-empty matrix")
    if len(cents[0]) != HAS_IMAGE_COL or len(cents) + 7 != width:
        raise BundleError(f"{where}: profile_space.centroids must be {width - 7} x {HAS_IMAGE_COL}")
    if not all(_finite_list(c) for c in cents):
        raise BundleError(f"{where}: profile_space.centroids must hold finite numbers")
    for key in ("mean", "std"):
        vec = need(space, key, list, "profile_space.")
        if len(vec) != width or not _finite_list(vec):
            raise BundleError(f"{where}: profile_space.{key} must be {width} finite numbers")
    num(space.get("cost_scale"), "profile_space.cost_scale", lo=1e-300, hi=1e9)
    for key in ("fill_lat", "fill_tok"):
        num(space.get(key), f"profile_space.{key}", lo=-1e9, hi=1e9)

    cov = m.get("coverage")
    if cov is not None:
        if not isinstance(cov, dict):
            raise BundleError(f"{where}: 'coverage' must be an object with a 'threshold'")
        num(cov.get("threshold"), "coverage.threshold", lo=-1.0, hi=1.0)

    lam = m.get("lambda", {})
    if not isinstance(lam, dict):
        raise BundleError(f"{where}: 'lambda' must be an object")
    num(lam.get("default", 0.0), "lambda.default", hi=MAX_LAMBDA)
    presets = lam.get("presets", {})
    if not isinstance(presets, dict):
        raise BundleError(f"{where}: lambda.presets must be an object")
    for key, p in presets.items():
        num(p.get("lambda") if isinstance(p, dict) else None, f"lambda.presets.{key}.lambda", hi=MAX_LAMBDA)


def _validate_memory(m: dict, files: dict, where: str, path: Path) -> int:
    """The `memory` entry (runtime/memory.py): its three files listed, its numbers in range. Returns the model_feat
    columns it adds (0 without a memory); the arrays' shapes are checked against it when they are read."""
    mem = m.get("memory")
    if mem is None:
        return 0
    if not isinstance(mem, dict):
        raise BundleError(f"{where}: 'memory' must be an object")
    g = m["graphs"].get("memory")
    fname = g.get("file") if isinstance(g, dict) else None
    if not isinstance(fname, str) or fname not in files:
        raise BundleError(f"{where}: a bundle with a memory needs graphs.memory, a file listed in 'files'")
    inside(path, fname, "graphs.memory.file")
    fl = mem.get("files")
    if not isinstance(fl, dict) or sorted(fl) != sorted(MEMORY_FILES):
        raise BundleError(f"{where}: memory.files must name the {', '.join(sorted(MEMORY_FILES))} files")
    for key, fname in fl.items():
        inside(path, fname, f"memory.files.{key}")
        if fname not in files:
            raise BundleError(f"{where}: memory.files.{key} {fname!r} is not listed in 'files'; the bundle is not closed")
    models = mem.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(x, str) and x for x in models) \
            or len(set(models)) != len(models):
        raise BundleError(f"{where}: memory.models must be a list of distinct model names")
    integer(mem.get("rows"), f"{where}: memory.rows", lo=1, hi=MEMORY_MAX_ROWS, err=BundleError)
    if "blend" in mem:   # for the record (the graph holds the value): how far the network corrects the memory
        number(mem["blend"], f"{where}: memory.blend", lo=0.0, hi=1.0, err=BundleError)
    integer(mem.get("dim"), f"{where}: memory.dim", lo=1, hi=MEMORY_MAX_DIM, err=BundleError)
    st = mem.get("settings")
    if not isinstance(st, dict):
        raise BundleError(f"{where}: memory.settings must be an object")
    integer(st.get("k"), f"{where}: memory.settings.k", lo=1, hi=4096, err=BundleError)
    for key, lo, hi in (("kappa", 1e-6, 1e6), ("tau", 1e-4, 10.0), ("image_weight", 0.0, 100.0), ("s_ref", -1.0, 1.0)):
        number(st.get(key), f"{where}: memory.settings.{key}", lo=lo, hi=hi, err=BundleError)
    return MEMORY_COLUMNS


_KIND_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer"}


def _finite_list(v) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
