"""`lr-onnx models propose/add/remove` on a training run: change the candidate pool without retraining (§3.5).

`propose` picks calibration queries spread over the capability slices for a new
model to answer; `add` builds that model's capability profile from its labelled
answers with the frozen slice centroids and standardisation of the run. The
network weights are not touched, and K simply grows by one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...runtime.errors import DataError
from ...runtime.manage import write_proposal
from ...runtime.added_models import LocalPrior, memory_estimates, untrained_answer
from ...runtime.memory import global_means
from ...runtime.profiles import ProfileSpace, new_model_profile
from ...runtime.validate import model_name
from ..data.format import load_outcomes_for
from .rundir import PER_MODEL, RunDir


def read_profiles(run_dir: str | Path) -> dict:
    """A run's profiles.json, checked (`RunDir.profiles`)."""
    return RunDir.of(run_dir).profiles()


_read = read_profiles


def _run_config(run_dir: Path) -> dict:
    return RunDir.of(run_dir).config()


def add_model(
    run_dir: str | Path,
    name: str,
    outcomes: str | Path,
    *,
    price_in: float | None = None,
    price_out: float | None = None,
    progress: bool = True,
) -> dict:
    """Append `name` to the run's pool; return a report (observed vs predicted score, slice counts, warnings)."""
    from .trainer import run_features

    run_dir = Path(run_dir)
    name = model_name(name, err=DataError)
    prof = _read(run_dir)
    text_only = _run_config(run_dir)["train"].get("text_only", False)
    if any(m["name"] == name for m in prof["models"]):
        raise DataError(f"model '{name}' is already in the pool of {run_dir}; remove it first")
    data = load_outcomes_for(outcomes, name)
    ok = data.A[:, 0]
    if ok.sum() == 0:
        raise DataError(f"{outcomes}: no query has both a score and a cost for '{name}'")
    space = ProfileSpace.from_dict(prof["space"])
    q = run_features(data, text_only, progress=progress)[ok]
    y = data.Y[ok, 0]
    new = new_model_profile(
        space,
        q,
        y,
        data.C[ok, 0],
        data.Lat[ok, 0],
        data.Tok[ok, 0],
        [data.question[i] for i in np.flatnonzero(ok)],
        price_in=price_in,
        price_out=price_out,
        pool_mean=float(np.mean([r[0] for r in prof["raw_profiles"]])),
    )
    raw, e_bar, estimator = new["raw"], new["e_bar"], new["estimator"]
    prof["models"].append(
        {
            "name": name,
            "price_in_per_mtok": price_in,
            "price_out_per_mtok": price_out,
            "added_with": {"queries": int(ok.sum()), "cost_estimator": estimator},
        }
    )
    prof["raw_profiles"].append(raw.tolist())
    prof["e_bar"].append(float(e_bar))
    if isinstance(prof.get("cost_model"), list):  # no image-token rule: its expected cost is the per-model constant
        prof["cost_model"].append(
            {
                "price_in_per_mtok": price_in,
                "price_out_per_mtok": price_out,
                "image_tokens": None,
                "output_tokens": None,
            }
        )
    mem = run_memory(run_dir, prof)
    if mem is not None:  # its labelled queries join the run's memory (kept in the retrieval space, 128 numbers each)
        prof["models"][-1]["memory"] = {"keys": np.round(mem.embed(q), 5).tolist(), "outcomes": y.tolist()}
        names, added = [m["name"] for m in prof["models"]], [bool(m.get("added_with")) for m in prof["models"]]
        cols = mem.columns(q, names, prior=[r[0] for r in prof["raw_profiles"]], blas=True)
        lp = LocalPrior.fit(cols[:, :-1], y, names[:-1], added[:-1])  # as runtime.manage.add_model fits it
        if lp is not None:
            prof["models"][-1]["added_with"]["local_prior"] = lp.to_dict()
    grown = None  # the run's memory with the new rows, exactly as run_memory would rebuild it from profiles.json
    if mem is not None:
        grown = mem.with_rows(None, name, y, keys=np.asarray(prof["models"][-1]["memory"]["keys"]))
    predicted = _predicted_mean(run_dir, prof, q, grown)
    RunDir.of(run_dir).write_profiles(prof)
    return {
        "name": name,
        "queries": int(ok.sum()),
        "observed_score": float(y.mean()),
        "predicted_score": predicted,
        "expected_cost": float(e_bar),
        "cost_estimator": estimator,
        "slice_counts": new["slice_counts"],
        "warnings": new["warnings"],
        "local_prior": prof["models"][-1]["added_with"].get("local_prior"),
    }


def spread_over_slices(rows: np.ndarray, slices: np.ndarray, S: int, n: int, seed: int) -> list[tuple[int, int]]:
    """(row, slice) pairs: ceil(n / S) rows drawn (seeded) from each slice (all of a slice's rows if it has
    fewer); when that makes more than n (S does not divide n, or S > n), a seeded draw keeps n of them."""
    per, rng = math.ceil(n / S), np.random.default_rng(seed)
    picked = []
    for s in range(S):
        picked += [(int(i), s) for i in np.sort(rng.permutation(rows[slices == s])[:per])]
    if len(picked) > n:
        picked = [picked[j] for j in np.sort(rng.choice(len(picked), n, replace=False))]
    return picked


def propose_queries(
    run_dir: str | Path, out: str | Path, *, n: int = 48, seed: int = 20260308, progress: bool = True
) -> dict:
    """§3.5 step 1: n calibration queries from the run's R_cal rows, spread over the capability slices by
    `spread_over_slices`, written to the new folder `out` as queries.jsonl plus copies of their images,
    ready for the new model's outcomes and `models add --outcomes out`."""
    from ...runtime.profiles import assign_slices
    from ..data.format import load_dataset
    from ..data.splits import ensure_splits, split_masks
    from .trainer import run_features

    if n < 24:
        raise DataError(f"propose at least 24 queries (method.md §3.5), got {n}")
    run_dir = Path(run_dir)
    prof = _read(run_dir)
    cfg = _run_config(run_dir)
    data_dir = cfg["data"]
    if not Path(data_dir).is_dir():
        raise DataError(
            f"{run_dir} was trained on {data_dir}, which is gone; the proposal draws from its calibration rows"
        )
    data = load_dataset(data_dir)
    cal = np.flatnonzero(split_masks(data, ensure_splits(data))["cal"])
    space = ProfileSpace.from_dict(prof["space"])
    slices = assign_slices(
        run_features(data, cfg["train"].get("text_only", False), progress=progress)[cal], space.centroids
    )
    S, per = len(space.centroids), math.ceil(n / len(space.centroids))
    picked = spread_over_slices(cal, slices, S, n, seed)
    counts = np.bincount([s for _, s in picked], minlength=S).tolist()
    write_proposal(
        out,
        [
            {
                "id": data.ids[i],
                "question": data.question[i],
                "images": data.images[i],
                "dataset": data.dataset[i],
                "slice": s,
            }
            for i, s in picked
        ],
        DataError,
    )
    short = [s for s in range(S) if (slices == s).sum() < per]
    return {"queries": len(picked), "per_slice": counts, "slices": S, "target_per_slice": per, "short_slices": short}


def run_memory(run_dir: Path, prof: dict | None = None):
    """The capability memory of a run's pool (None if its router has none): rebuilt from the run's training data
    with its settings, then the labelled rows of every model added with `models add` appended, and the columns of
    models no longer in the pool dropped."""
    cfg = _run_config(Path(run_dir))
    if not cfg.get("memory"):
        return None
    from .trainer import attach_run_memory, load_training_set

    prof = prof or _read(run_dir)
    P = load_training_set(
        cfg["data"], slices=cfg["train"]["slices"], text_only=cfg["train"].get("text_only", False), progress=False
    )
    mem = attach_run_memory(P, cfg).memory
    for m in prof["models"]:
        if m.get("memory"):
            mem = mem.with_rows(None, m["name"], m["memory"]["outcomes"], keys=np.asarray(m["memory"]["keys"]))
    names = [m["name"] for m in prof["models"]]
    return mem.without_models([m for m in mem.models if m not in names])


def _predicted_mean(run_dir: Path, prof: dict, q: np.ndarray, mem) -> float:
    """Mean mu_tilde of the newest model on its own labelled queries, with the whole pool available; a model added
    after training gets the memory's estimate, as the Router answers for it (`runtime.added_models.untrained_answer`).
    `mem`: the run's memory with the new model's rows (None: the run has none)."""
    import torch

    from ...runtime.profiles import model_features
    from .trainer import load_router

    net, _ = load_router(run_dir)
    feat = ProfileSpace.from_dict(prof["space"]).model_feat(prof["raw_profiles"], prof["e_bar"])
    names, priors = [m["name"] for m in prof["models"]], [r[0] for r in prof["raw_profiles"]]
    cols = None if mem is None else mem.columns(q, names, prior=priors, blas=True)
    mf = torch.from_numpy(model_features(feat, None, cols, rows=len(q)))
    with torch.no_grad():
        mu = net(torch.from_numpy(q), mf, torch.ones(len(q), feat.shape[0], dtype=torch.bool))[3].numpy()
    if mem is not None and cols is not None:
        added = np.array([bool(m.get("added_with")) for m in prof["models"]])
        lps = LocalPrior.of_pool([(m["name"], m.get("added_with")) for m in prof["models"]], str(run_dir))
        est = memory_estimates(cols, names, global_means(mem, names, priors), mem.settings.kappa, lps)
        mu = untrained_answer(mu, mu, np.zeros_like(mu), est, added)[1]
    return float(mu[:, -1].mean())


def remove_model(run_dir: str | Path, name: str) -> None:
    run_dir = Path(run_dir)
    prof = _read(run_dir)
    names = [m["name"] for m in prof["models"]]
    if name not in names:
        raise DataError(f"model '{name}' is not in the pool; pool: {', '.join(names)}")
    if len(names) == 1:
        raise DataError("cannot remove the last model of the pool")
    j = names.index(name)
    for key in PER_MODEL:
        if isinstance(prof.get(key), list):
            prof[key].pop(j)
    RunDir.of(run_dir).write_profiles(prof)
