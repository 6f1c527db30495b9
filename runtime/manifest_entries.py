"""The manifest's entries (files, graphs, pool models, lambda presets, coverage, memory) as frozen dataclasses, each
parsed with its checks and written back by its `to_dict`; `runtime.manifest.Manifest` holds them, and `Checker` makes
every refusal one line naming the manifest and the entry."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .bounds import MAX_LAMBDA
from .costs import rule_spec
from .errors import BundleError
from .files import inside
from .memory import FILES as MEMORY_FILES, MAX_DIM as MEMORY_MAX_DIM, MAX_ROWS as MEMORY_MAX_ROWS, MemorySettings
from .memory_sources import MAX_SOURCES, settings_entry
from .validate import integer, number, text

MANIFEST = "manifest.json"
PRICE_KEYS = ("price_in_per_mtok", "price_out_per_mtok")
_KIND_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer"}


class Checker:
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


def extra_keys(d: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in known}


def finite_list(v: Any) -> bool:
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
    cost_hat: float  # expected_cost_usd / profile_space.cost_scale
    raw_profile: tuple[float, ...]  # overall score, per-slice scores, cost, latency, tokens, evidence
    profile: tuple[float, ...]  # the same, standardised: what the router graph reads
    price_in_per_mtok: float | None = None
    price_out_per_mtok: float | None = None
    image_tokens: str | dict[str, Any] | None = None  # runtime.costs rule: per-query costs from each image's size
    output_tokens: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. `added_with` (models add)

    KNOWN = (
        "name",
        "price_in_per_mtok",
        "price_out_per_mtok",
        "expected_cost_usd",
        "cost_hat",
        "raw_profile",
        "profile",
        "image_tokens",
        "output_tokens",
    )

    @property
    def prior(self) -> float:
        """The model's overall score (the profile's first number): the memory's fallback far from every query."""
        return self.raw_profile[0]

    def pricing(self) -> dict[str, Any]:
        """The fields `runtime.costs.query_cost` prices a query with."""
        return {
            "price_in_per_mtok": self.price_in_per_mtok,
            "price_out_per_mtok": self.price_out_per_mtok,
            "image_tokens": self.image_tokens,
            "output_tokens": self.output_tokens,
        }

    def to_dict(self) -> dict[str, Any]:
        opt = {
            k: v
            for k, v in (("image_tokens", self.image_tokens), ("output_tokens", self.output_tokens))
            if v is not None
        }
        return {
            "name": self.name,
            "price_in_per_mtok": self.price_in_per_mtok,
            "price_out_per_mtok": self.price_out_per_mtok,
            "expected_cost_usd": self.expected_cost_usd,
            "cost_hat": self.cost_hat,
            "raw_profile": list(self.raw_profile),
            "profile": list(self.profile),
            **opt,
            **self.extra,
        }

    @classmethod
    def parse(cls, p: Any, j: int, c: Checker) -> "PoolEntry":
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
        out_tok = (
            None if p.get("output_tokens") is None else c.num(p["output_tokens"], f"{ctx}output_tokens {of}", hi=1e7)
        )
        vecs = {
            key: tuple(c.num(x, f"{ctx}{key} {of}", lo=-1e9, hi=1e9) for x in c.need(p, key, list, ctx))
            for key in ("profile", "raw_profile")
        }
        return cls(
            name=name,
            expected_cost_usd=c.num(p.get("expected_cost_usd"), f"{ctx}expected_cost_usd {of}", hi=1e6),
            cost_hat=c.num(p.get("cost_hat"), f"{ctx}cost_hat {of}", hi=MAX_LAMBDA),
            raw_profile=vecs["raw_profile"],
            profile=vecs["profile"],
            price_in_per_mtok=prices["price_in_per_mtok"],
            price_out_per_mtok=prices["price_out_per_mtok"],
            image_tokens=rule,
            output_tokens=out_tok,
            extra=extra_keys(p, cls.KNOWN),
        )


@dataclass(frozen=True)
class Preset:
    """A named lambda (`--lambda balanced`) with what validation measured for it."""

    lam: float
    extra: Mapping[str, Any] = field(default_factory=dict)  # val_score, val_cost, test_score, budget fraction, ...

    def to_dict(self) -> dict[str, Any]:
        return {"lambda": self.lam, **self.extra}


@dataclass(frozen=True)
class LambdaSpec:
    """The default lambda, the named presets and, after `calibrate`, the target it was chosen for."""

    default: float = 0.0
    presets: Mapping[str, Preset] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)  # `calibrated`

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default, "presets": {k: p.to_dict() for k, p in self.presets.items()}, **self.extra}

    @classmethod
    def parse(cls, lam: Any, c: Checker) -> "LambdaSpec":
        if not isinstance(lam, dict):
            raise c.fail("'lambda' must be an object")
        presets = lam.get("presets", {})
        if not isinstance(presets, dict):
            raise c.fail("lambda.presets must be an object")
        parsed = {}
        for key, p in presets.items():
            value = c.num(
                p.get("lambda") if isinstance(p, dict) else None, f"lambda.presets.{key}.lambda", hi=MAX_LAMBDA
            )
            parsed[key] = Preset(value, extra_keys(p, ("lambda",)))
        return cls(
            c.num(lam.get("default", 0.0), "lambda.default", hi=MAX_LAMBDA),
            parsed,
            extra_keys(lam, ("default", "presets")),
        )


@dataclass(frozen=True)
class Coverage:
    """The out-of-coverage rule: a query whose best centroid similarity is below `threshold` is flagged."""

    threshold: float
    extra: Mapping[str, Any] = field(default_factory=dict)  # percentile, train_similarity, train_queries

    @property
    def percentile(self) -> float:  # of the training queries' own similarities
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
    blend: float | None = None  # for the record (the graph holds it): how far the network corrects the memory
    extra: Mapping[str, Any] = field(default_factory=dict)
    sources: tuple[tuple[str, MemorySettings], ...] | None = None  # a setting per source (runtime.memory_sources)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": dict(self.files),
            "models": list(self.models),
            "rows": self.rows,
            "dim": self.dim,
            "settings": self.settings.to_dict(),
            **({"blend": self.blend} if self.blend is not None else {}),
            **({"sources": settings_entry(self.sources)} if self.sources is not None else {}),
            **self.extra,
        }

    @classmethod
    def from_written(cls, entry: Mapping[str, Any], blend: float | None = None) -> "MemoryEntry":
        """The entry `Memory.write` returns (trusted: this process made it)."""
        return cls(
            dict(entry["files"]),
            tuple(entry["models"]),
            int(entry["rows"]),
            int(entry["dim"]),
            MemorySettings.from_dict(entry["settings"]),
            blend,
            sources=_sources(entry.get("sources")),
        )

    @classmethod
    def parse(
        cls, mem: Any, graphs: Mapping[str, GraphEntry], files: Mapping[str, FileEntry], c: Checker
    ) -> "MemoryEntry":
        if not isinstance(mem, dict):
            raise c.fail("'memory' must be an object")
        if "memory" not in graphs:
            raise c.fail("a bundle with a memory needs graphs.memory, a file listed in 'files'")
        fl = mem.get("files")
        want = sorted([*MEMORY_FILES, *(["sources"] if "sources" in mem else [])])
        if not isinstance(fl, dict) or sorted(fl) != want:
            raise c.fail(f"memory.files must name the {', '.join(want)} files")
        for key, fname in fl.items():
            c.listed(fname, f"memory.files.{key}", files, f"memory.files.{key}")
        models = mem.get("models")
        if (
            not isinstance(models, list)
            or not models
            or not all(isinstance(x, str) and x for x in models)
            or len(set(models)) != len(models)
        ):
            raise c.fail("memory.models must be a list of distinct model names")
        rows = c.int_(mem.get("rows"), "memory.rows", 1, MEMORY_MAX_ROWS)
        blend = c.num(mem["blend"], "memory.blend", lo=0.0, hi=1.0) if "blend" in mem else None
        dim = c.int_(mem.get("dim"), "memory.dim", 1, MEMORY_MAX_DIM)
        st = _checked_settings(mem.get("settings"), "memory.settings", c)
        sources = None
        if "sources" in mem:
            src = mem["sources"]
            names = src.get("names") if isinstance(src, dict) else None
            sts = src.get("settings") if isinstance(src, dict) else None
            if (
                not isinstance(names, list)
                or not 1 <= len(names) <= MAX_SOURCES
                or not all(isinstance(x, str) and x for x in names)
                or len(set(names)) != len(names)
                or not isinstance(sts, list)
                or len(sts) != len(names)
            ):
                raise c.fail("memory.sources must be {names: [distinct names], settings: [one per name]}")
            sources = tuple(
                (n, _checked_settings(x, f"memory.sources.settings[{i}]", c))
                for i, (n, x) in enumerate(zip(names, sts))
            )
        return cls(
            dict(fl),
            tuple(models),
            rows,
            dim,
            st,
            blend,
            extra_keys(mem, ("files", "models", "rows", "dim", "settings", "blend", "sources")),
            sources,
        )


def _checked_settings(st: Any, where: str, c: Checker) -> MemorySettings:
    """Memory settings from the manifest, each number in its range."""
    if not isinstance(st, dict):
        raise c.fail(f"{where} must be an object")
    c.int_(st.get("k"), f"{where}.k", 1, 4096)
    for key, lo, hi in (("kappa", 1e-6, 1e6), ("tau", 1e-4, 10.0), ("image_weight", 0.0, 100.0), ("s_ref", -1.0, 1.0)):
        c.num(st.get(key), f"{where}.{key}", lo=lo, hi=hi)
    return MemorySettings.from_dict(st)


def _sources(d: Any) -> tuple[tuple[str, MemorySettings], ...] | None:
    """`Memory.write`'s `sources` entry (trusted), as MemoryEntry holds it."""
    if d is None:
        return None
    return tuple((n, MemorySettings.from_dict(st)) for n, st in zip(d["names"], d["settings"]))
