"""Bundle maintenance without torch: add or remove a model, calibrate lambda to a budget.

Every change writes a manifest through a temporary file and a rename; `models add`
and `models remove` write a new bundle folder (a copy) and never touch the source.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, TYPE_CHECKING

import numpy as np

from .bounds import MAX_PRICE_PER_MTOK
from .bundle import MANIFEST, load_bundle
from .costs import mean_output_tokens, rule_spec
from .errors import BundleError, InputError, OptionError
from .added_models import LocalPrior
from .memory import Memory
from .files import atomic_write_text, staged_folder
from .manifest import FileEntry, Manifest, MemoryEntry, PoolEntry
from .validate import model_name, number
from .policy import LAMBDA_GRID, choose
from .profiles import new_model_profile

if TYPE_CHECKING:  # annotations only: no import cycle at run time
    from .router import Router


def write_manifest(folder: Path, manifest: Manifest) -> None:
    atomic_write_text(folder / MANIFEST, json.dumps(manifest.to_dict(), indent=2) + "\n")


BAKED_GRAPHS = ("fused",)  # graphs with the pool and the memory built in as constants (export --fused)


def write_edited(folder: Path, before: Manifest, after: Manifest) -> list[str]:
    """Write `after` into `folder` (a bundle copy being edited from `before`); returns the files dropped.

    A graph that bakes in the pool and the memory (`fused.onnx`) would go on answering for the old ones
    once either changes, so it leaves the copy: re-export with --fused for a new one."""
    dropped: list[str] = []
    if after.model_names != before.model_names or after.memory != before.memory:
        graphs, files = dict(after.graphs), dict(after.files)
        for g in BAKED_GRAPHS:
            if g in graphs:
                fname = graphs.pop(g).file
                files.pop(fname, None)
                (folder / fname).unlink(missing_ok=True)
                dropped.append(fname)
        after = replace(after, graphs=graphs, files=files)
    write_manifest(folder, after)
    return dropped


@contextmanager
def edited_copy(src: Path, out: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary copy of bundle `src` beside `out`; it becomes `out` only if the block succeeds,
    and is removed on every failure path (nothing is left in OUT's folder or in /tmp)."""
    out = Path(out)
    if not str(out).strip():
        raise OptionError("--out is empty")
    if out.exists():
        raise InputError(f"{out}: already exists; choose a new folder for the edited bundle")
    if not out.parent.is_dir():
        raise InputError(f"{out}: the folder {out.parent} does not exist")
    try:
        with staged_folder(out, InputError) as tmp:  # the one staged-folder writer (runtime.files)
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            yield tmp
    except OSError as e:
        raise InputError(f"{out}: cannot be written ({e.strerror or type(e).__name__})") from None


def add_model(
    router: "Router",
    out: str | os.PathLike[str],
    name: str,
    queries: list[tuple[list[Any], str]],
    y: np.ndarray,
    cost: np.ndarray,
    lat: np.ndarray,
    tok: np.ndarray,
    *,
    price_in: float | None = None,
    price_out: float | None = None,
    image_tokens: str | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A copy of the router's bundle with `name` appended to the pool (method.md §3.5)."""
    m = router.bundle.manifest
    name = model_name(name)
    if name in router.names:
        raise InputError(f"model '{name}' is already in the pool; remove it first or pick another name")
    if len(queries) == 0:
        raise InputError(f"no labelled query for '{name}'")
    price_in = None if price_in is None else number(price_in, "price_in (USD per 1M tokens)", hi=MAX_PRICE_PER_MTOK)
    price_out = None if price_out is None else number(price_out, "price_out (USD per 1M tokens)", hi=MAX_PRICE_PER_MTOK)
    space = m.profile_space
    meta: list[Any] = []
    q = router.features(queries, meta=meta)
    new = new_model_profile(
        space,
        q,
        y,
        cost,
        lat,
        tok,
        [x for _, x in queries],
        price_in=price_in,
        price_out=price_out,
        pool_mean=float(np.mean([p.prior for p in m.pool])),
    )
    raw, e_bar, estimator = new["raw"], new["e_bar"], new["estimator"]
    rule = out_tokens = None
    if image_tokens is not None:
        if price_in is None:
            raise OptionError("--image-tokens needs --price-in (and --price-out): a per-query cost is priced tokens")
        try:
            rule = rule_spec(image_tokens)
        except ValueError as e:
            raise OptionError(str(e)) from None
        out_tokens = mean_output_tokens(
            {"price_in_per_mtok": price_in, "price_out_per_mtok": price_out, "image_tokens": rule}, meta, cost, tok
        )
    added_with: dict[str, Any] = {"queries": len(queries), "cost_estimator": estimator}
    cols = router.memory_columns(q)
    if cols is not None:  # its estimate's per-query prior: a line in the trained models' local difficulty
        lp = LocalPrior.fit(cols, y, router.names, [not t for t in router.trained])
        if lp is not None:
            added_with["local_prior"] = lp.to_dict()
    entry = PoolEntry(
        name=name,
        expected_cost_usd=e_bar,
        cost_hat=e_bar / space.cost_scale,
        raw_profile=tuple(raw.tolist()),
        profile=tuple(space.standardise(raw).tolist()),
        price_in_per_mtok=price_in,
        price_out_per_mtok=price_out,
        image_tokens=rule,
        output_tokens=out_tokens,
        extra={"added_with": added_with},
    )
    mem = router.memory()
    with edited_copy(router.bundle.path, out) as tmp:
        grown_m = m.with_pool(m.pool + (entry,))
        if mem is not None:  # its labelled queries join the memory: a local estimate from the first query on
            grown_m = with_memory(tmp, grown_m, mem.with_rows(q, name, y))
        dropped = write_edited(tmp, m, grown_m)
    from .router import Router

    grown = Router.load(Path(out), provider=router.provider)
    costs = grown.query_costs(meta, len(q))  # what `route` will show for these very queries
    sc = grown.score_features(q, np.ones((len(q), len(grown.names)), bool), costs / grown.space.cost_scale)
    return {
        "name": name,
        "queries": len(queries),
        "observed_score": float(np.mean(y)),
        "predicted_score": float(sc["mu_tilde"][:, -1].mean()),
        "expected_cost": float(costs[:, -1].mean()),
        "observed_cost": float(np.mean(cost)),
        "cost_estimator": estimator,
        "slice_counts": new["slice_counts"],
        "pool_scores": {n: round(float(sc["mu_tilde"][:, k].mean()), 4) for k, n in enumerate(grown.names)},
        "warnings": new["warnings"],
        "local_prior": added_with.get("local_prior"),
        "dropped": dropped,
    }


def write_proposal(out: str | os.PathLike[str], rows: list[dict[str, Any]], err: type[Exception]) -> None:
    """The new folder `out`: queries.jsonl (each row's fields, its images renamed into images/, empty
    outcomes for the new model's) plus copies of the images; whole or not at all (`staged_folder`)."""
    with staged_folder(out, err) as tmp:
        (tmp / "images").mkdir()
        lines: list[str] = []
        for row in rows:
            imgs = []
            for j, src in enumerate(row["images"]):
                rel = f"images/{len(lines):03d}_{j}{Path(src).suffix.lower()}"
                shutil.copyfile(src, tmp / rel)
                imgs.append(rel)
            lines.append(json.dumps({**row, "images": imgs, "outcomes": {}}))
        atomic_write_text(tmp / "queries.jsonl", "\n".join(lines) + "\n")


def propose_from_queries(
    router: "Router",
    records: list[dict[str, Any]],
    out: str | os.PathLike[str],
    *,
    n: int = 48,
    seed: int = 20260308,
    batch_size: int = 64,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """`models propose --bundle`: n of the user's own queries (route-batch records: id, question, images),
    spread over the bundle's capability slices like a run's proposal, written to the new folder `out` as
    queries.jsonl plus copies of their images, ready for a new model's outcomes and `models add`. Numpy
    and ONNX Runtime only: a serving-side user needs no training run."""
    from .profiles import assign_slices

    if n < 24:
        raise OptionError(f"propose at least 24 queries (method.md §3.5), got {n}")
    if len(records) < n:
        raise InputError(f"only {len(records)} usable queries to choose {n} from; give more, or a smaller --n")
    space = router.space
    feats = []
    for s in range(0, len(records), batch_size):
        chunk = records[s : s + batch_size]
        feats.append(router.features([(r["images"], r["question"]) for r in chunk]))
        if on_progress:
            on_progress(len(chunk))
    slices = assign_slices(np.concatenate(feats), space.centroids)
    S = len(space.centroids)
    # round robin over the slices your queries fall in (seeded order within each): as even as they allow
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(slices == s))) for s in range(S)]
    picked: list[tuple[int, int]] = []
    while len(picked) < n:
        for s in range(S):
            if pools[s] and len(picked) < n:
                picked.append((int(pools[s].pop()), s))
    write_proposal(
        out,
        [{**{k: records[i][k] for k in ("id", "question", "images")}, "slice": int(s)} for i, s in picked],
        InputError,
    )
    counts = np.bincount([s for _, s in picked], minlength=S)
    return {
        "queries": len(picked),
        "per_slice": counts.tolist(),
        "slices": S,
        "target_per_slice": math.ceil(n / S),
        "short_slices": [s for s in range(S) if (slices == s).sum() < math.ceil(n / S)],
    }


def remove_model(bundle_path: str | os.PathLike[str], out: str | os.PathLike[str], name: str) -> list[str]:
    """A copy of bundle `bundle_path` at `out` without model `name`; returns the files dropped (`write_edited`)."""
    b = load_bundle(bundle_path)
    names = b.model_names
    if name not in names:
        raise OptionError(f"model '{name}' is not in the pool; pool: {', '.join(names)}")
    if len(names) == 1:
        raise OptionError("cannot remove the last model of the pool")
    with edited_copy(b.path, out) as tmp:
        m = b.manifest.with_pool(p for p in b.manifest.pool if p.name != name)
        if m.memory is not None and name in m.memory.models:
            mem = Memory.from_bundle(b).without_models([name])
            if len(mem):
                m = with_memory(tmp, m, mem)
            else:  # only the removed model had outcomes: the router has nothing left to remember
                raise OptionError(f"model '{name}' holds every outcome of the bundle's memory; it cannot be removed")
        dropped = write_edited(tmp, b.manifest, m)
    return dropped


def with_memory(folder: Path, manifest: Manifest, mem: "Memory") -> Manifest:
    """The manifest with `mem` written into `folder` (a bundle copy being edited): its entry and the three files'
    hashes replaced."""
    from .bundle import sha256_file

    old = manifest.memory
    # the exporter's blend is kept
    entry = MemoryEntry.from_written(mem.write(folder), None if old is None else old.blend)
    if old is not None:
        entry = replace(entry, extra=old.extra)
    files = dict(manifest.files)
    for fname in entry.files.values():
        files[fname] = FileEntry(sha256_file(folder / fname), (folder / fname).stat().st_size)
    return replace(manifest, memory=entry, files=files)


def calibration_target(
    router: "Router", max_avg_cost: float | None, max_share: tuple[str, float] | None
) -> dict[str, Any]:
    """The one budget target, checked before any query is encoded."""
    if (max_avg_cost is None) == (max_share is None):
        raise OptionError("give exactly one target: --max-avg-cost or --max-share MODEL:P")
    if max_share is not None and max_share[0] not in router.names:
        raise OptionError(f"unknown model '{max_share[0]}'; pool: {', '.join(router.names)}")
    if max_share is None:
        return {"max_avg_cost": max_avg_cost}
    return {"max_share": {"model": max_share[0], "share": max_share[1]}}


def calibrate(
    router: "Router",
    q: np.ndarray,
    Y: np.ndarray,
    C: np.ndarray,
    A: np.ndarray,
    *,
    meta: list[Any] | None = None,
    max_avg_cost: float | None = None,
    max_share: tuple[str, float] | None = None,
) -> dict[str, Any]:
    """Pick lambda on the user's labelled queries for one budget target and record it in the manifest.

    Y, C, A are `[N, K]` in the bundle's pool order (realised scores, costs, availability); `meta`
    (from `Router.features`) gives each query's expected costs per model exactly as `route` computes
    them, so each lambda of the grid is judged by the choices `route` will make with it.
    Among the feasible lambdas of the grid, the one with the highest mean score wins and is written
    (ties: lower cost, then larger lambda). When none is feasible nothing is written: the result has
    `met` False, `lambda` None, and `points` (every lambda's score, cost and share) says what is possible.
    """
    target = calibration_target(router, max_avg_cost, max_share)
    ok = A.any(axis=1)
    if not ok.any():
        raise InputError("no labelled query has an outcome for any model of the bundle's pool")
    c_hat = router.query_costs(meta, len(q))[ok] / router.space.cost_scale  # as Router.decide scales them
    q, Y, C, A = q[ok], np.nan_to_num(Y[ok]), np.nan_to_num(C[ok]), A[ok]
    mt = router.score_features(q, A, c_hat)["mu_tilde"]
    rows = np.arange(len(q))
    points: list[dict[str, Any]] = []
    for lam in LAMBDA_GRID:
        ch = choose(mt, c_hat, A, lam)
        score, cost = float(Y[rows, ch].mean()), float(C[rows, ch].mean())
        share = float((ch == router.names.index(max_share[0])).mean()) if max_share else None
        feasible = (
            cost <= max_avg_cost
            if max_avg_cost is not None
            else (max_share is not None and share is not None and share <= max_share[1])
        )
        points.append({"lambda": float(lam), "score": score, "cost": cost, "share": share, "feasible": feasible})
    feas = [p for p in points if p["feasible"]]
    if not feas:
        return {"met": False, "lambda": None, "queries": int(len(q)), "points": points, "target": target}
    best = max(feas, key=lambda p: (p["score"], -p["cost"], p["lambda"]))
    m = router.bundle.manifest
    lam = replace(
        m.lambdas,
        default=best["lambda"],
        extra={**m.lambdas.extra, "calibrated": {"target": target, "queries": int(len(q)), "operating_point": best}},
    )
    write_manifest(router.bundle.path, replace(m, lambdas=lam))
    return {
        "met": True,
        "lambda": best["lambda"],
        "score": best["score"],
        "cost": best["cost"],
        "share": best["share"],
        "queries": int(len(q)),
        "points": points,
        "target": target,
    }


def tradeoff(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct operating points of a lambda sweep: consecutive lambdas that choose alike are one row, its
    `lambda` the first of them and `lambda_to` the last (calibration's tie rule may pick any of them)."""
    out: list[dict[str, Any]] = []
    for p in points:
        if out and (round(out[-1]["score"], 6), round(out[-1]["cost"], 12)) == (
            round(p["score"], 6),
            round(p["cost"], 12),
        ):
            out[-1]["lambda_to"] = p["lambda"]
            continue
        out.append({**p, "lambda_to": p["lambda"]})
    return out


def check_golden(router: "Router") -> dict[str, Any]:
    """Re-run the bundle's golden fixture (recorded by the exporter with PyTorch) through ONNX Runtime."""
    if "golden.json" not in router.bundle.manifest.files:
        raise BundleError(f"{router.bundle.path}: no golden.json (re-export the bundle to get one)")
    g = router.bundle.read_json("golden.json")
    queries = [([_golden_image()] if item["image"] else [], item["question"]) for item in g["queries"]]
    q = router.features(queries)
    mt = router.score_features(q, np.ones((len(q), len(router.names)), bool))["mu_tilde"]
    ref = np.asarray(g["mu_tilde"])
    k = min(ref.shape[1], mt.shape[1])
    diff = float(np.abs(mt[:, :k] - ref[:, :k]).max())
    return {
        "max_abs_diff": diff,
        "tolerance": g["tolerance"],
        "passed": diff <= g["tolerance"],
        "same_choice": bool((mt[:, :k].argmax(1) == ref[:, :k].argmax(1)).all()),
    }


def _golden_image() -> np.ndarray:
    """A deterministic 64x48 test picture (gradient and stripes), made in numpy so no file ships."""
    y, x = np.mgrid[0:48, 0:64]
    img = np.stack([x * 4, y * 5, ((x // 8 + y // 8) % 2) * 255], axis=-1)
    return img.astype(np.uint8)
