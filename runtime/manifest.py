"""The bundle manifest, typed: parsed and validated once (`Manifest.from_dict`), written once (`Manifest.to_dict`).

Every reader uses attributes of these frozen dataclasses, never raw keys, so a field's type and bounds are
checked in one place and the rest of the runtime can trust them. Keys this version does not know are kept
(`extra`) and written back after the known ones, so an edit (`models add`, `calibrate`, `refresh`) never drops
what a newer writer recorded. `to_dict` writes the known keys in the exporter's order: a manifest that is
read and written again comes out the same (a test checks it on the shipped bundle).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from .errors import BundleError
from .features import HAS_IMAGE_COL, TEXT_ONLY
from .files import inside
from .memory import COLUMNS as MEMORY_COLUMNS
from .preprocess import ImageSpec, TextSpec
from .profiles import ProfileSpace
from .manifest_entries import (
    MANIFEST,
    Checker,
    Coverage,
    FileEntry,
    GraphEntry,
    LambdaSpec,
    MemoryEntry,
    PoolEntry,
    Preset,
    extra_keys,
    finite_list,
)

# one import point for the manifest's types (the entries live in runtime/manifest_entries.py)
__all__ = [
    "MANIFEST",
    "SCHEMA_VERSION",
    "Coverage",
    "FileEntry",
    "GraphEntry",
    "LambdaSpec",
    "Manifest",
    "MemoryEntry",
    "PoolEntry",
    "Preset",
    "needed_graphs",
]

SCHEMA_VERSION = 2  # the newest schema this runtime reads; a bundle says the oldest that reads it right (needed_schema)
# the graphs a bundle must have (`needed_graphs`: all but the image encoder for a router that reads no images);
# `memory` and `fused` are optional
ROUTER, IMAGE_ENCODER, TEXT_ENCODER = "router", "image_encoder", "text_encoder"
GRAPHS = (ROUTER, IMAGE_ENCODER, TEXT_ENCODER)


def needed_graphs(reads_images: bool) -> tuple[str, ...]:
    """The graphs a bundle must have: a router that reads no images needs no image encoder, and its export ships
    none (13 MB less); one kept from an older export is allowed and never run."""
    return GRAPHS if reads_images else tuple(g for g in GRAPHS if g != IMAGE_ENCODER)


RESAMPLE_NAMES = ("bilinear", "bicubic", "nearest")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Manifest:
    """`manifest.json`: what a bundle holds and how to route with it."""

    graphs: Mapping[str, GraphEntry]
    image: ImageSpec
    text: TextSpec
    pool: tuple[PoolEntry, ...]
    profile_space: ProfileSpace
    files: Mapping[str, FileEntry] = field(default_factory=dict)
    schema_version: int = 1
    created_by: Mapping[str, Any] | None = None
    precision: str | None = None
    opset: int | None = None
    setting: str | None = None
    encoder_version: str | None = None
    query_dim: int | None = None
    query_features: str | None = None  # "text": the router reads no images (`features.without_images`); None: all
    model_dim: int | None = None
    cost_estimator: str | None = None
    lambdas: LambdaSpec = field(default_factory=LambdaSpec)
    coverage: Coverage | None = None
    training_metrics: Mapping[str, Any] | None = None
    memory: MemoryEntry | None = None
    refreshed: Mapping[str, Any] | None = None  # runtime.refresh: what feedback it has used
    extra: Mapping[str, Any] = field(default_factory=dict)

    KNOWN = (
        "schema_version",
        "created_by",
        "precision",
        "opset",
        "setting",
        "encoder_version",
        "graphs",
        "preprocessing",
        "query_dim",
        "query_features",
        "model_dim",
        "pool",
        "profile_space",
        "cost_estimator",
        "lambda",
        "coverage",
        "training_metrics",
        "memory",
        "refreshed",
        "files",
    )

    @property
    def reads_images(self) -> bool:
        """Whether the router reads the image features (False: it was trained on text alone, by `train --text-only`
        or because validation chose text)."""
        return self.query_features != TEXT_ONLY

    @property
    def needed_schema(self) -> int:
        """The oldest schema whose readers route this bundle as meant, which `to_dict` writes: 2 for a router that
        reads no images (a version-1 reader ignores `query_features` and would feed it images), else 1, so that an
        older lr-onnx refuses what it would misread and keeps reading the rest."""
        return 1 if self.reads_images else 2

    @property
    def model_names(self) -> list[str]:
        return [p.name for p in self.pool]

    def with_pool(self, pool: Any) -> "Manifest":  # a changed pool (models add / remove, refresh, serve's subset)
        return replace(self, pool=tuple(pool))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, known keys in the exporter's order (optional ones only when set), then `extra`."""
        d: dict[str, Any] = {"schema_version": max(self.schema_version, self.needed_schema)}
        opt = {
            "created_by": self.created_by,
            "precision": self.precision,
            "opset": self.opset,
            "setting": self.setting,
            "encoder_version": self.encoder_version,
        }
        d.update({k: v for k, v in opt.items() if v is not None})
        d["graphs"] = {k: g.to_dict() for k, g in self.graphs.items()}
        image = {k: list(v) if isinstance(v, tuple) else v for k, v in self.image.to_dict().items()}
        d["preprocessing"] = {"image": image, "text": self.text.to_dict()}
        dims = (("query_dim", self.query_dim), ("query_features", self.query_features), ("model_dim", self.model_dim))
        d.update({k: v for k, v in dims if v is not None})
        d.update(pool=[p.to_dict() for p in self.pool], profile_space=self.profile_space.to_dict())
        d.update({"cost_estimator": self.cost_estimator} if self.cost_estimator is not None else {})
        d["lambda"] = self.lambdas.to_dict()
        d.update(
            {
                k: v
                for k, v in (
                    ("coverage", self.coverage and self.coverage.to_dict()),
                    ("training_metrics", self.training_metrics),
                    ("memory", self.memory and self.memory.to_dict()),
                    ("refreshed", self.refreshed),
                )
                if v is not None
            }
        )
        d["files"] = {k: f.to_dict() for k, f in self.files.items()}
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, m: Any, path: Path) -> "Manifest":
        """Parse and validate: anything the runtime could not route with safely is one `BundleError` line naming
        the entry (`path` is the bundle folder: file names must resolve inside it)."""
        c = Checker(path)
        if not isinstance(m, dict):
            raise c.fail(f"expected a JSON object, got {type(m).__name__}")
        version = m.get("schema_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise c.fail(f"schema_version must be a positive integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"{path}: bundle schema version {version} is newer than this lr-onnx supports "
                f"({SCHEMA_VERSION}); upgrade lr-onnx"
            )
        files = _parse_files(c.need(m, "files", dict), c)
        reads = m.get("query_features")
        if reads not in (None, TEXT_ONLY):
            raise c.fail(f"'query_features' must be {TEXT_ONLY!r} or absent, got {reads!r}")
        graphs = _parse_graphs(c.need(m, "graphs", dict), files, c, needed_graphs(reads != TEXT_ONLY))
        image, text_spec = _parse_preprocessing(c.need(m, "preprocessing", dict), files, c)
        pool = _parse_pool(c.need(m, "pool", list), c)
        memory = None if m.get("memory") is None else MemoryEntry.parse(m["memory"], graphs, files, c)
        width = len(pool[0].profile)
        extra_cols = MEMORY_COLUMNS if memory is not None else 0
        dim = m.get("model_dim")
        if dim is not None and dim != width + 1 + extra_cols:
            raise c.fail(
                f"profiles of width {width} do not match model_dim {dim!r} (expected {width + 1 + extra_cols})"
            )
        space = _parse_space(c.need(m, "profile_space", dict), width, c)
        cov = m.get("coverage")
        if cov is not None and not isinstance(cov, dict):
            raise c.fail("'coverage' must be an object with a 'threshold'")
        coverage = (
            None
            if cov is None
            else Coverage(
                c.num(cov.get("threshold"), "coverage.threshold", lo=-1.0, hi=1.0), extra_keys(cov, ("threshold",))
            )
        )
        return cls(
            graphs=graphs,
            image=image,
            text=text_spec,
            pool=pool,
            profile_space=space,
            files=files,
            schema_version=version,
            created_by=m.get("created_by"),
            precision=m.get("precision"),
            opset=m.get("opset"),
            setting=m.get("setting"),
            encoder_version=m.get("encoder_version"),
            query_dim=m.get("query_dim"),
            query_features=reads,
            model_dim=dim,
            cost_estimator=m.get("cost_estimator"),
            lambdas=LambdaSpec.parse(m.get("lambda", {}), c),
            coverage=coverage,
            training_metrics=m.get("training_metrics"),
            memory=memory,
            refreshed=_parse_refreshed(m.get("refreshed"), c),
            extra=extra_keys(m, cls.KNOWN),
        )


def _parse_refreshed(r: Any, c: Checker) -> Mapping[str, Any] | None:
    """`refreshed` (what `lr-onnx refresh` has used, runtime/refresh.py): its times and counts checked, since the
    next refresh reads them."""
    if r is None:
        return None
    if not isinstance(r, dict):
        raise c.fail("'refreshed' must be an object")
    for key in ("feedback_through", "decisions_through"):
        if key in r:
            c.num(r[key], f"refreshed.{key}")
    for key in ("records", "memory_rows_added", "feedback_rows", "refreshes"):
        if key in r:
            c.int_(r[key], f"refreshed.{key}", 0, 1 << 40)
    return r


def _parse_files(files: dict[str, Any], c: Checker) -> dict[str, FileEntry]:
    if not files:
        raise c.fail("'files' is empty; a bundle lists every file it holds with its sha256")
    out = {}
    for name, info in files.items():
        inside(c.path, name, f"files[{name!r}]")
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("sha256"), str)
            or not _HEX64.fullmatch(info["sha256"])
        ):
            raise c.fail(f"files[{name!r}] needs a 'sha256' of 64 lowercase hex digits")
        size = info.get("bytes")
        out[name] = FileEntry(
            info["sha256"], None if size is None else c.int_(size, f"files[{name!r}].bytes", 0, 1 << 50)
        )
    return out


def _parse_graphs(
    graphs: dict[str, Any], files: Mapping[str, FileEntry], c: Checker, needed: tuple[str, ...]
) -> dict[str, GraphEntry]:
    out = {}
    for g in needed:
        c.need(graphs, g, dict, "graphs.")
    for g, entry in graphs.items():
        if g not in GRAPHS and not isinstance(entry, dict):
            raise c.fail(f"'graphs.{g}' must be an object")
        fname = c.need(entry, "file", str, f"graphs.{g}.")
        c.listed(fname, f"graphs.{g}.file", files, f"graphs.{g}.file")
        io = {kind: entry.get(kind, {}) for kind in ("inputs", "outputs")}
        if not all(isinstance(v, dict) and all(isinstance(d, list) for d in v.values()) for v in io.values()):
            raise c.fail(f"graphs.{g}.inputs and .outputs must map names to lists of dimensions")
        out[g] = GraphEntry(fname, io["inputs"], io["outputs"])
    return out


def _parse_preprocessing(pre: dict[str, Any], files: Mapping[str, FileEntry], c: Checker) -> tuple[ImageSpec, TextSpec]:
    image = c.need(pre, "image", dict, "preprocessing.")
    size = c.int_(image.get("size"), "preprocessing.image.size", 16, 2048)
    if image.get("resample") not in RESAMPLE_NAMES:
        raise c.fail(
            f"preprocessing.image.resample must be one of {', '.join(RESAMPLE_NAMES)}, got {image.get('resample')!r}"
        )

    def three(key: str, lo: float, hi: float) -> tuple[float, float, float]:
        v = image.get(key)
        if not isinstance(v, list) or len(v) != 3:
            raise c.fail(f"preprocessing.image.{key} must be a list of 3 numbers")
        name = f"preprocessing.image.{key}"
        x, y, z = (c.int_(x, name, int(lo), int(hi)) if key == "pad" else c.num(x, name, lo, hi) for x in v)
        return x, y, z

    mean, std, (r, g, b) = three("mean", -1e3, 1e3), three("std", 1e-6, 1e3), three("pad", 0, 255)
    max_pixels = c.int_(image.get("max_pixels", 1), "preprocessing.image.max_pixels", 1, 1 << 40)
    unknown = set(image) - {"size", "resample", "mean", "std", "pad", "max_pixels"}
    if unknown:
        raise c.fail(f"preprocessing.image has unknown keys {sorted(unknown)}")
    spec = ImageSpec(
        size=size,
        resample=image["resample"],
        mean=mean,
        std=std,
        pad=(int(r), int(g), int(b)),
        **({"max_pixels": max_pixels} if "max_pixels" in image else {}),
    )
    t = c.need(pre, "text", dict, "preprocessing.")
    max_tokens = c.int_(t.get("max_tokens"), "preprocessing.text.max_tokens", 1, 4096)
    tok = t.get("tokenizer_file", "tokenizer.json")
    c.listed(tok, "preprocessing.text.tokenizer_file", files, "tokenizer")
    return spec, TextSpec(tokenizer_file=tok, max_tokens=max_tokens)


def _parse_pool(pool: list[Any], c: Checker) -> tuple[PoolEntry, ...]:
    if not pool:
        raise c.fail("'pool' is empty")
    out: list[PoolEntry] = []
    for j, p in enumerate(pool):
        entry = PoolEntry.parse(p, j, c)
        if any(e.name == entry.name for e in out):
            raise c.fail(f"duplicate model name {entry.name!r} in 'pool'")
        width = len(out[0].profile) if out else len(entry.profile)
        if len(entry.profile) != width or len(entry.raw_profile) != width:
            raise c.fail(f"model {entry.name!r} has a profile of another width than pool[0] ({width})")
        out.append(entry)
    return tuple(out)


def _parse_space(space: dict[str, Any], width: int, c: Checker) -> ProfileSpace:
    cents = c.need(space, "centroids", list, "profile_space.")
    if not cents or not all(isinstance(x, list) and len(x) == len(cents[0]) and x for x in cents):
        raise c.fail("profile_space.centroids must be a non-empty matrix")
    if len(cents[0]) != HAS_IMAGE_COL or len(cents) + 7 != width:
        raise c.fail(f"profile_space.centroids must be {width - 7} x {HAS_IMAGE_COL}")
    if not all(finite_list(x) for x in cents):
        raise c.fail("profile_space.centroids must hold finite numbers")
    for key in ("mean", "std"):
        vec = c.need(space, key, list, "profile_space.")
        if len(vec) != width or not finite_list(vec):
            raise c.fail(f"profile_space.{key} must be {width} finite numbers")
    c.num(space.get("cost_scale"), "profile_space.cost_scale", lo=1e-300, hi=1e9)
    for key in ("fill_lat", "fill_tok"):
        c.num(space.get(key), f"profile_space.{key}", lo=-1e9, hi=1e9)
    return ProfileSpace.from_dict(space)
