"""`lr-onnx evaluate RUN --data OTHER`: a trained run scored on another dataset (transfer), never retrained.

The run keeps everything it learned: its network, its capability profiles (from its own calibration
rows), its standardisation. Only the models both pools share by name are routed; fewer than two shared
is refused with one line. The other dataset's queries are encoded by the same frozen encoders, and the
routed choices are scored with the other dataset's realised outcomes and costs: how far the router's
knowledge carries to queries it has not seen the like of. Written to RUN/transfer_<name>.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ...runtime.errors import DataError
from ...runtime.profiles import ProfileSpace
from . import routing_metrics as M
from ..data.format import load_dataset
from .report import _f, sweep
from ..files import atomic_write_text
from ..train.trainer import load_router, predict, run_features
from ..train.rundir import RunDir


def transfer_evaluate(
    run_dir: str | Path, other_dir: str | Path, *, split: str = "test", progress: bool = True
) -> dict:
    run_dir, other_dir = Path(run_dir), Path(other_dir)
    net, cfg = load_router(run_dir)
    prof = RunDir.of(run_dir).profiles()
    data = load_dataset(other_dir)
    run_models = [m["name"] if isinstance(m, dict) else m for m in prof["models"]]
    shared = [m for m in run_models if m in data.model_names]
    if len(shared) < 2:
        raise DataError(
            f"{other_dir}: shares {len(shared)} model(s) with the run's pool "
            f"({', '.join(shared) or 'none'}); transfer evaluation needs at least two"
        )
    if data.has_split:
        rows = np.array([i for i in range(data.n) if data.split[i] == split])
        which = f"its own '{split}' split"
    else:
        rows, which = np.arange(data.n), "every row (it has no split)"
    kr = [run_models.index(m) for m in shared]
    kd = [data.model_names.index(m) for m in shared]
    A_all = data.A[:, kd]
    rows = rows[A_all[rows].any(axis=1)] if len(rows) else rows
    if not len(rows):
        raise DataError(f"{other_dir}: no row of {which} has an outcome for the shared models")
    space = ProfileSpace.from_dict(prof["space"])
    e_bar = np.asarray(prof["e_bar"], float)[kr]
    model_feat = space.model_feat(np.asarray(prof["raw_profiles"], float)[kr], e_bar)
    q = run_features(data, bool(cfg["train"].get("text_only")), progress=progress)  # what the router reads
    view = SimpleNamespace(q=q, data=SimpleNamespace(A=A_all))
    cols = None
    if net.cfg.memory:  # the run's memory (its training queries), asked about the other dataset's queries
        from ..train.pool import run_memory

        cols = run_memory(run_dir, prof).columns(q[rows], shared, blas=True)
    mt, _ = predict(net, view, rows, avail=A_all[rows], model_feat=model_feat, mem_cols=cols)
    Y, C, A = np.nan_to_num(data.Y[rows][:, kd]), np.nan_to_num(data.C[rows][:, kd]), A_all[rows]
    c_hat = e_bar / space.cost_scale
    curve = sweep(mt, Y, C, A, c_hat)
    points = [(p["cost"], p["score"]) for p in curve]
    single = M.single_models(Y, C, A)
    b = M.best_single(Y, C, A)
    oq, oc = M.routed_means(Y, C, M.oracle_choice(Y, C, A))
    rq, rc = M.random_router(Y, C, A)
    run_best = int(np.argmax([p[0] for p in np.asarray(prof["raw_profiles"], float)[kr]]))
    out = {
        "run": str(run_dir),
        "trained_on": cfg.get("data"),
        "data": str(other_dir),
        "rows": int(len(rows)),
        "split": which,
        "shared_models": shared,
        "not_shared": {
            "run_only": [m for m in run_models if m not in shared],
            "data_only": [m for m in data.model_names if m not in shared],
        },
        "latentrouter": {
            "score_at_lambda0": _f(curve[0]["score"]),
            "cost_at_lambda0": _f(curve[0]["cost"]),
            "nauc": _f(M.nauc(points)),
            "choices_at_lambda0": {m: int((curve[0]["choice"] == k).sum()) for k, m in enumerate(shared)},
        },
        "best_single": {"name": shared[b], "score": _f(single[b]["score"]), "cost": _f(single[b]["cost"])},
        "run_best_model": {
            "name": shared[run_best],
            "score": _f(single[run_best]["score"]),
            "note": "the shared model with the best overall score on the run's calibration rows",
        },
        "oracle": {"score": _f(oq), "cost": _f(oc)},
        "random": {"score": _f(rq), "cost": _f(rc)},
        "single_models": {m: {"score": _f(s["score"]), "cost": _f(s["cost"])} for m, s in zip(shared, single)},
    }
    atomic_write_text(
        run_dir / f"transfer_{other_dir.resolve().name}.json", json.dumps(out, indent=2, allow_nan=False) + "\n"
    )
    return out
