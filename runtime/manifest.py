"""The bundle manifest, typed: parsed and validated once (`Manifest.from_dict`), written once (`Manifest.to_dict`).

Every reader uses attributes of these frozen dataclasses, never raw keys, so a field's type and bounds are
checked in one place and the rest of the runtime can trust them. Keys this version does not know are kept
(`extra`) and written back after the known ones, so an edit (`models add`, `calibrate`, `refresh`) never drops
what a newer writer recorded. `to_dict` writes the known keys in the exporter's order: a manifest that is
read and written again comes out the same (a test checks it on the shipped bundle).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from .bounds import MAX_LAMBDA
from .costs import rule_spec
from .errors import BundleError
from .features import HAS_IMAGE_COL
from .files import inside
from .memory import COLUMNS as MEMORY_COLUMNS, FILES as MEMORY_FILES, MAX_DIM as MEMORY_MAX_DIM, \
    MAX_ROWS as MEMORY_MAX_ROWS, MemorySettings
from .preprocess import ImageSpec, TextSpec
from .profiles import ProfileSpace
from .validate import integer, number, text

MANIFEST = "manifest.json"
PRICE_KEYS = ("price_in_per_mtok", "price_out_per_mtok")
SCHEMA_VERSION = 1
GRAPHS = ("router", "image_encoder", "text_encoder")   # every bundle has these; `memory` and `fused` are optional
RESAMPLE_NAMES = ("bilinear", "bicubic", "nearest")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KIND_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer"}


class _Checker:
    """The one-line refusals of one manifest: each names the manifest file and the entry."""

    def __init__(self, path: Path):
        self.path = path
        self.where = f"{path / MANIFEST}"

    def fail(self, msg: str) -> BundleError:
        return BundleError(f"{self.where}: {msg}")

    def need(self, obj: Any, key: str, kind: type, ctx: str = "") -> Any:
        if not isinstance(obj, dict) or key not in obj:
            raise self.fail(f"missing '{ctx}{key}'")
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            raise self.fail(f"'{ctx}{key}' must be {_KIND_NAMES.get(kind, 'of another type')}")
        return obj[key]

    def num(self, v: Any, name: str, lo: float = 0.0, hi: float = 1e12) -> float:
        return number(v, f"{self.where}: {name}", lo=lo, hi=hi, err=BundleError)

    def int_(self, v: Any, name: str, lo: int, hi: int) -> int:
        return integer(v, f"{self.where}: {name}", lo=lo, hi=hi, err=BundleError)

    def listed(self, fname: Any, entry: str, files: Mapping[str, Any], what: str) -> str:
        """A file an entry names: inside the bundle folder and listed (hashed) in `files`."""
        inside(self.path, fname, entry)
        if fname not in files:
            raise self.fail(f"{what} {fname!r} is not listed in 'files'; the bundle is not closed")
        return str(fname)


def _extra(d: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in known}


def _finite_list(v: Any) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)


@dataclass(frozen=True)
class FileEntry:
    """One file of the bundle: its sha256 (checked on every read) and its size."""

    sha256: str
    bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, **({"bytes": self.bytes} if self.bytes is not None else {})}


@dataclass(frozen=True)
class GraphEntry:
    """One ONNX graph: its file and the inputs and outputs it must have (names -> dims; str dims are symbolic)."""

    file: str
    inputs: Mapping[str, list[Any]] = field(default_factory=dict)
    outputs: Mapping[str, list[Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "inputs": dict(self.inputs), "outputs": dict(self.outputs)}


@dataclass(frozen=True)
class PoolEntry:
    """One candidate model: prices, expected cost, and its capability profile (raw and standardised)."""

    name: str
    expected_cost_usd: float
    cost_hat: float                      # expected_cost_usd / profile_space.cost_scale
    raw_profile: tuple[float, ...]       # overall score, per-slice scores, cost, latency, tokens, evidence
    profile: tuple[float, ...]           # the same, standardised: what the router graph reads
    price_in_per_mtok: float | None = None
    price_out_per_mtok: float | None = None
    image_tokens: str | dict[str, Any] | None = None   # runtime.costs rule: per-query costs from each image's size
    output_tokens: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)   # e.g. `added_with` (models add)

    KNOWN = ("name", "price_in_per_mtok", "price_out_per_mtok", "expected_cost_usd", "cost_hat", "raw_profile",
             "profile", "image_tokens", "output_tokens")

    @property
    def prior(self) -> float:
        """The model's overall score (the profile's first number): the memory's fallback far from every query."""
        return self.raw_profile[0]

    def pricing(self) -> dict[str, Any]:
        """The fields `runtime.costs.query_cost` prices a query with."""
        return {"price_in_per_mtok": self.price_in_per_mtok, "price_out_per_mtok": self.price_out_per_mtok,
                "image_tokens": self.image_tokens, "output_tokens": self.output_tokens}

    def to_dict(self) -> dict[str, Any]:
        opt = {k: v for k, v in (("image_tokens", self.image_tokens), ("output_tokens", self.output_tokens))
               if v is not None}
        return {"name": self.name, "price_in_per_mtok": self.price_in_per_mtok,
                "price_out_per_mtok": self.price_out_per_mtok, "expected_cost_usd": self.expected_cost_usd,
                "cost_hat": self.cost_hat, "raw_profile": list(self.raw_profile), "profile": list(self.profile),
                **opt, **self.extra}

    @classmethod
    def parse(cls, p: Any, j: int, c: _Checker) -> "PoolEntry":
        ctx = f"pool[{j}]."
        name = text(c.need(p, "name", str, ctx), f"{c.where}: {ctx}name", err=BundleError)
        of = f"(model {name!r})"
        prices = {k: None if p.get(k) is None else c.num(p[k], f"{ctx}{k} {of}", hi=1e6) for k in PRICE_KEYS}
        rule = p.get("image_tokens")
        if rule is not None:
            try:
                rule_spec(rule)
            except (ValueError, TypeError) as e:
                raise c.fail(f"{ctx}image_tokens {of}: {e}") from None
        out_tok = None if p.get("output_tokens") is None else c.num(p["output_tokens"], f"{ctx}output_tokens {of}",
                                                                    hi=1e7)
        vecs = {key: tuple(c.num(x, f"{ctx}{key} {of}", lo=-1e9, hi=1e9) for x in c.need(p, key, list, ctx))
                for key in ("profile", "raw_profile")}
        return cls(name=name, expected_cost_usd=c.num(p.get("expected_cost_usd"), f"{ctx}expected_cost_usd {of}",
                                                      hi=1e6),
                   cost_hat=c.num(p.get("cost_hat"), f"{ctx}cost_hat {of}", hi=MAX_LAMBDA),
                   raw_profile=vecs["raw_profile"], profile=vecs["profile"],
                   price_in_per_mtok=prices["price_in_per_mtok"], price_out_per_mtok=prices["price_out_per_mtok"],
                   image_tokens=rule, output_tokens=out_tok, extra=_extra(p, cls.KNOWN))


@dataclass(frozen=True)
class Preset:
    """A named lambda (`--lambda balanced`) with what validation measured for it."""

    lam: float
    extra: Mapping[str, Any] = field(default_factory=dict)   # val_score, val_cost, test_score, budget fraction, ...

    def to_dict(self) -> dict[str, Any]:
        return {"lambda": self.lam, **self.extra}


@dataclass(frozen=True)
class LambdaSpec:
    """The default lambda, the named presets and, after `calibrate`, the target it was chosen for."""

    default: float = 0.0
    presets: Mapping[str, Preset] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)   # `calibrated`

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default, "presets": {k: p.to_dict() for k, p in self.presets.items()}, **self.extra}

    @classmethod
    def parse(cls, lam: Any, c: _Checker) -> "LambdaSpec":
        if not isinstance(lam, dict):
            raise c.fail("'lambda' must be an object")
        presets = lam.get("presets", {})
        if not isinstance(presets, dict):
            raise c.fail("lambda.presets must be an object")
        parsed = {}
        for key, p in presets.items():
            value = c.num(p.get("lambda") if isinstance(p, dict) else None, f"lambda.presets.{key}.lambda",
                          hi=MAX_LAMBDA)
            parsed[key] = Preset(value, _extra(p, ("lambda",)))
        return cls(c.num(lam.get("default", 0.0), "lambda.default", hi=MAX_LAMBDA), parsed,
                   _extra(lam, ("default", "presets")))


@dataclass(frozen=True)
class Coverage:
    """The out-of-coverage rule: a query whose best centroid similarity is below `threshold` is flagged."""

    threshold: float
    extra: Mapping[str, Any] = field(default_factory=dict)   # percentile, train_similarity, train_queries

    @property
    def percentile(self) -> float:   # of the training queries' own similarities
        return float(self.extra.get("percentile", 1))

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, **self.extra}


@dataclass(frozen=True)
class MemoryEntry:
    """The capability memory (runtime/memory.py): its three files, the models it has outcomes for, its size."""

    files: Mapping[str, str]
    models: tuple[str, ...]
    rows: int
    dim: int
    settings: MemorySettings
    blend: float | None = None   # for the record (the graph holds it): how far the network corrects the memory
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"files": dict(self.files), "models": list(self.models), "rows": self.rows, "dim": self.dim,
                "settings": self.settings.to_dict(), **({"blend": self.blend} if self.blend is not None else {}),
                **self.extra}

    @classmethod
    def from_written(cls, entry: Mapping[str, Any], blend: float | None = None) -> "MemoryEntry":
        """The entry `Memory.write` returns (trusted: this process made it)."""
        return cls(dict(entry["files"]), tuple(entry["models"]), int(entry["rows"]), int(entry["dim"]),
                   MemorySettings.from_dict(entry["settings"]), blend)

    @classmethod
    def parse(cls, mem: Any, graphs: Mapping[str, GraphEntry], files: Mapping[str, FileEntry],
              c: _Checker) -> "MemoryEntry":
        if not isinstance(mem, dict):
            raise c.fail("'memory' must be an object")
        if "memory" not in graphs:
            raise c.fail("a bundle with a memory needs graphs.memory, a file listed in 'files'")
        fl = mem.get("files")
        if not isinstance(fl, dict) or sorted(fl) != sorted(MEMORY_FILES):
            raise c.fail(f"memory.files must name the {', '.join(sorted(MEMORY_FILES))} files")
        for key, fname in fl.items():
            c.listed(fname, f"memory.files.{key}", files, f"memory.files.{key}")
        models = mem.get("models")
        if not isinstance(models, list) or not models or not all(isinstance(x, str) and x for x in models) \
                or len(set(models)) != len(models):
            raise c.fail("memory.models must be a list of distinct model names")
        rows = c.int_(mem.get("rows"), "memory.rows", 1, MEMORY_MAX_ROWS)
        blend = c.num(mem["blend"], "memory.blend", lo=0.0, hi=1.0) if "blend" in mem else None
        dim = c.int_(mem.get("dim"), "memory.dim", 1, MEMORY_MAX_DIM)
        st = mem.get("settings")
        if not isinstance(st, dict):
            raise c.fail("memory.settings must be an object")
        c.int_(st.get("k"), "memory.settings.k", 1, 4096)
        for key, lo, hi in (("kappa", 1e-6, 1e6), ("tau", 1e-4, 10.0), ("image_weight", 0.0, 100.0),
                            ("s_ref", -1.0, 1.0)):
            c.num(st.get(key), f"memory.settings.{key}", lo=lo, hi=hi)
        return cls(dict(fl), tuple(models), rows, dim, MemorySettings.from_dict(st), blend,
                   _extra(mem, ("files", "models", "rows", "dim", "settings", "blend")))


@dataclass(frozen=True)
class Manifest:
    """`manifest.json`: what a bundle holds and how to route with it."""

    graphs: Mapping[str, GraphEntry]
    image: ImageSpec
    text: TextSpec
    pool: tuple[PoolEntry, ...]
    profile_space: ProfileSpace
    files: Mapping[str, FileEntry] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    created_by: Mapping[str, Any] | None = None
    precision: str | None = None
    opset: int | None = None
    setting: str | None = None
    encoder_version: str | None = None
    query_dim: int | None = None
    model_dim: int | None = None
    cost_estimator: str | None = None
    lambdas: LambdaSpec = field(default_factory=LambdaSpec)
    coverage: Coverage | None = None
    training_metrics: Mapping[str, Any] | None = None
    memory: MemoryEntry | None = None
    refreshed: Mapping[str, Any] | None = None   # runtime.refresh: what feedback it has used
    extra: Mapping[str, Any] = field(default_factory=dict)

    KNOWN = ("schema_version", "created_by", "precision", "opset", "setting", "encoder_version", "graphs",
             "preprocessing", "query_dim", "model_dim", "pool", "profile_space", "cost_estimator", "lambda",
             "coverage", "training_metrics", "memory", "refreshed", "files")

    @property
    def model_names(self) -> list[str]:
        return [p.name for p in self.pool]

    def with_pool(self, pool: Any) -> "Manifest":   # a changed pool (models add / remove, refresh, serve's subset)
        return replace(self, pool=tuple(pool))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, known keys in the exporter's order (optional ones only when set), then `extra`."""
        d: dict[str, Any] = {"schema_version": self.schema_version}
        opt = {"created_by": self.created_by, "precision": self.precision, "opset": self.opset,
               "setting": self.setting, "encoder_version": self.encoder_version}
        d.update({k: v for k, v in opt.items() if v is not None})
        d["graphs"] = {k: g.to_dict() for k, g in self.graphs.items()}
        image = {k: list(v) if isinstance(v, tuple) else v for k, v in self.image.to_dict().items()}
        d["preprocessing"] = {"image": image, "text": self.text.to_dict()}
        d.update({k: v for k, v in (("query_dim", self.query_dim), ("model_dim", self.model_dim)) if v is not None})
        d.update(pool=[p.to_dict() for p in self.pool], profile_space=self.profile_space.to_dict())
        d.update({"cost_estimator": self.cost_estimator} if self.cost_estimator is not None else {})
        d["lambda"] = self.lambdas.to_dict()
        d.update({k: v for k, v in (("coverage", self.coverage and self.coverage.to_dict()),
                                    ("training_metrics", self.training_metrics),
                                    ("memory", self.memory and self.memory.to_dict()), ("refreshed", self.refreshed))
                  if v is not None})
        d["files"] = {k: f.to_dict() for k, f in self.files.items()}
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, m: Any, path: Path) -> "Manifest":
        """Parse and validate: anything the runtime could not route with safely is one `BundleError` line naming
        the entry (`path` is the bundle folder: file names must resolve inside it)."""
        c = _Checker(path)
        if not isinstance(m, dict):
            raise c.fail(f"expected a JSON object, got {type(m).__name__}")
        version = m.get("schema_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise c.fail(f"schema_version must be a positive integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise BundleError(f"{path}: bundle schema version {version} is newer than this lr-onnx supports "
                              f"({SCHEMA_VERSION}); upgrade lr-onnx")
        files = _parse_files(c.need(m, "files", dict), c)
        graphs = _parse_graphs(c.need(m, "graphs", dict), files, c)
        image, text_spec = _parse_preprocessing(c.need(m, "preprocessing", dict), files, c)
        pool = _parse_pool(c.need(m, "pool", list), c)
        memory = None if m.get("memory") is None else MemoryEntry.parse(m["memory"], graphs, files, c)
        width = len(pool[0].profile)
        extra_cols = MEMORY_COLUMNS if memory is not None else 0
        dim = m.get("model_dim")
        if dim is not None and dim != width + 1 + extra_cols:
            raise c.fail(f"profiles of width {width} do not match model_dim {dim!r} "
                         f"(expected {width + 1 + extra_cols})")
        space = _parse_space(c.need(m, "profile_space", dict), width, c)
        cov = m.get("coverage")
        if cov is not None and not isinstance(cov, dict):
            raise c.fail("'coverage' must be an object with a 'threshold'")
        coverage = None if cov is None else Coverage(c.num(cov.get("threshold"), "coverage.threshold", lo=-1.0, hi=1.0),
                                                     _extra(cov, ("threshold",)))
        return cls(graphs=graphs, image=image, text=text_spec, pool=pool, profile_space=space, files=files,
                   schema_version=version, created_by=m.get("created_by"), precision=m.get("precision"),
                   opset=m.get("opset"), setting=m.get("setting"), encoder_version=m.get("encoder_version"),
                   query_dim=m.get("query_dim"), model_dim=dim, cost_estimator=m.get("cost_estimator"),
                   lambdas=LambdaSpec.parse(m.get("lambda", {}), c), coverage=coverage,
                   training_metrics=m.get("training_metrics"), memory=memory, refreshed=m.get("refreshed"),
                   extra=_extra(m, cls.KNOWN))


def _parse_files(files: dict[str, Any], c: _Checker) -> dict[str, FileEntry]:
    if not files:
        raise c.fail("'files' is empty; a bundle lists every file it holds with its sha256")
    out = {}
    for name, info in files.items():
        inside(c.path, name, f"files[{name!r}]")
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str) \
                or not _HEX64.fullmatch(info["sha256"]):
            raise c.fail(f"files[{name!r}] needs a 'sha256' of 64 lowercase hex digits")
        size = info.get("bytes")
        out[name] = FileEntry(info["sha256"],
                              None if size is None else c.int_(size, f"files[{name!r}].bytes", 0, 1 << 50))
    return out


def _parse_graphs(graphs: dict[str, Any], files: Mapping[str, FileEntry], c: _Checker) -> dict[str, GraphEntry]:
    out = {}
    for g in GRAPHS:
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


def _parse_preprocessing(pre: dict[str, Any], files: Mapping[str, FileEntry], c: _Checker) -> tuple[ImageSpec,
                         TextSpec]:
    image = c.need(pre, "image", dict, "preprocessing.")
    size = c.int_(image.get("size"), "preprocessing.image.size", 16, 2048)
    if image.get("resample") not in RESAMPLE_NAMES:
        raise c.fail(f"preprocessing.image.resample must be one of {', '.join(RESAMPLE_NAMES)}, "
                     f"got {image.get('resample')!r}")
    vecs = {}
    for key, lo, hi in (("mean", -1e3, 1e3), ("std", 1e-6, 1e3), ("pad", 0, 255)):
        v = image.get(key)
        if not isinstance(v, list) or len(v) != 3:
            raise c.fail(f"preprocessing.image.{key} must be a list of 3 numbers")
        check = c.int_ if key == "pad" else c.num
        vecs[key] = tuple(check(x, f"preprocessing.image.{key}", lo, hi) for x in v)  # type: ignore[arg-type]
    max_pixels = c.int_(image.get("max_pixels", 1), "preprocessing.image.max_pixels", 1, 1 << 40)
    unknown = set(image) - {"size", "resample", "mean", "std", "pad", "max_pixels"}
    if unknown:
        raise c.fail(f"preprocessing.image has unknown keys {sorted(unknown)}")
    spec = ImageSpec(size=size, resample=image["resample"],
                     mean=vecs["mean"], std=vecs["std"], pad=vecs["pad"],  # type: ignore[arg-type]
                     **({"max_pixels": max_pixels} if "max_pixels" in image else {}))
    t = c.need(pre, "text", dict, "preprocessing.")
    max_tokens = c.int_(t.get("max_tokens"), "preprocessing.text.max_tokens", 1, 4096)
    tok = t.get("tokenizer_file", "tokenizer.json")
    c.listed(tok, "preprocessing.text.tokenizer_file", files, "tokenizer")
    return spec, TextSpec(tokenizer_file=tok, max_tokens=max_tokens)


def _parse_pool(pool: list[Any], c: _Checker) -> tuple[PoolEntry, ...]:
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


def _parse_space(space: dict[str, Any], width: int, c: _Checker) -> ProfileSpace:
    cents = c.need(space, "centroids", list, "profile_space.")
    if not cents or not all(isinstance(x, list) and len(x) == len(cents[0]) and x for x in cents):
        raise c.fail("profile_space.centroids must be a non-empty matrix")
    if len(cents[0]) != HAS_IMAGE_COL or len(cents) + 7 != width:
        raise c.fail(f"profile_space.centroids must be {width - 7} x {HAS_IMAGE_COL}")
    if not all(_finite_list(x) for x in cents):
        raise c.fail("profile_space.centroids must hold finite numbers")
    for key in ("mean", "std"):
        vec = c.need(space, key, list, "profile_space.")
        if len(vec) != width or not _finite_list(vec):
            raise c.fail(f"profile_space.{key} must be {width} finite numbers")
    c.num(space.get("cost_scale"), "profile_space.cost_scale", lo=1e-300, hi=1e9)
    for key in ("fill_lat", "fill_tok"):
        c.num(space.get(key), f"profile_space.{key}", lo=-1e9, hi=1e9)
    return ProfileSpace.from_dict(space)
