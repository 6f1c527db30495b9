"""Why adding a held-out model back from 48 labels recovers what it does: swap the added model's column.

Runs after `benchmarks/newmodel.py` (it reuses that run's routers in OUT_DIR and its newmodel.json): the router
trained without the strongest model routes the test pool with the model added back as `models add` does, and
then with the added model's predicted score replaced by each of

    as_added             what `models add` gives it: the memory's estimate (its labelled queries among the neighbours,
                         else a line in the trained models' local difficulty fitted on its labels, `LocalPrior`), as
                         the Router answers for a model added after training
    memory_global_mean_prior  the memory's estimate with its global mean as the prior (the rule before `LocalPrior`)
    network_column       the trained network's column for it, read from its profile (what the Router gave before)
    labelled_mean        the mean of its 48 labelled outcomes, the same for every query
    test_mean            its true mean on the test split, the same for every query (an oracle constant)
    ridge_on_others_A    ridge (alpha A) of its 48 outcomes on the other models' predictions for those queries
    trained_with_column  the column of the router trained with it (an oracle: the per-query shape it learned)

Everything else (the other models' columns, costs, policy) is unchanged, so the recovery of each says how much
of the gap between "without it" and "trained with it" that column alone explains.

    python benchmarks/newmodel_diagnose.py DATA_DIR OUT_DIR [--into benchmarks/results/newmodel_diagnosis.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lr_onnx.export.files import atomic_write_text
from lr_onnx.export.train.trainer import TrainConfig, load_training_set, predict
from lr_onnx.runtime.added_models import untrained_answer

from newmodel import (
    HeldOut,
    _route,
    _trained,
    added_estimates,
    added_model_feat,
    held_out_models,
    recovery,
    test_split,
)  # benchmarks/newmodel.py

N = 48


def diagnose(data_dir: Path, out: Path) -> dict:
    prior = json.loads((out / "newmodel.json").read_text(encoding="utf-8"))
    cfg = TrainConfig()  # the first training seed's routers (OUT_DIR itself)
    full = load_training_set(data_dir, slices=cfg.slices, progress=False)
    d = full.data
    test, Y, C, A = test_split(full)
    h = HeldOut.of(
        data_dir, out, cfg, full, next(n for n, w in held_out_models(full).items() if w == "strongest"), False
    )
    name, k, keep, order, names, P_wo, net = h.name, h.k, h.keep, h.order, h.names, h.P_wo, h.net
    seed0 = prior["models"][name].get("per_seed", [prior["models"][name]])[0]  # the same seed's references
    upper, lower = seed0["upper"], seed0["lower_without"]
    rows = h.labelled(N, 0)
    feat, c_hat = added_model_feat(P_wo, full, k, rows)
    est, cols = added_estimates(P_wo.memory, full.q[rows], d.Y[rows, k], full.q[test], names)
    est_mean_prior = added_estimates(
        P_wo.memory, full.q[rows], d.Y[rows, k], full.q[test], names, "added_global_mean_prior"
    )[0]
    net_column = predict(net, full, test, avail=A[:, order], model_feat=feat, mem_cols=cols)[0]
    added = np.arange(len(order)) == len(keep)
    mt = untrained_answer(net_column, net_column, np.zeros_like(net_column), est, added)[1]  # as the Router
    others = predict(net, P_wo, rows)[0]  # the other models on the labelled queries (memory leave-one-out)
    y = d.Y[rows, k]
    columns = {
        "as_added": mt[:, -1],
        "memory_global_mean_prior": est_mean_prior[:, -1],
        "network_column": net_column[:, -1],
        "labelled_mean": np.full(len(test), y.mean()),
        "test_mean": np.full(len(test), Y[A[:, k], k].mean()),
    }
    X, Xt = others - others.mean(0), mt[:, :-1] - others.mean(0)
    for alpha in (0.1, 1.0, 10.0):
        b = np.linalg.solve(X.T @ X + alpha * np.eye(X.shape[1]), X.T @ (y - y.mean()))
        columns[f"ridge_on_others_{alpha:g}"] = np.clip(y.mean() + Xt @ b, 0, 1)
    net_full = _trained(data_dir, Path(prior["full_run"]), cfg, full, False)
    columns["trained_with_column"] = predict(net_full, full, test)[0][:, k]
    result = {
        "model": name,
        "labelled": int(len(rows)),
        "lower_without": lower,
    }
    result["upper"] = upper
    for label, col in columns.items():
        m = mt.copy()
        m[:, -1] = np.where(A[:, k], col, -1.0)
        r = _route(m, Y[:, order], C[:, order], A[:, order], c_hat)
        result[label] = {
            "score_at_lambda0": round(float(r["score_at_lambda0"]), 4),
            "nauc": round(float(r["nauc"]), 4),
            "share_routed_to_model_at_lambda0": round(float(np.mean(r["choice_at_lambda0"] == len(keep))), 4),
            "recovery": recovery(result["lower_without"], r, upper),
        }
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("out_dir", type=Path, help="the OUT_DIR of a finished benchmarks/newmodel.py run")
    ap.add_argument("--into", type=Path, default=Path("benchmarks/results/newmodel_diagnosis.json"))
    a = ap.parse_args(argv)
    res = diagnose(a.data_dir, a.out_dir)
    into = json.loads(a.into.read_text(encoding="utf-8")) if a.into.is_file() else {}
    into[a.data_dir.resolve().name] = res
    atomic_write_text(a.into, json.dumps(into, indent=2) + "\n")
    for label, r in res.items():
        if isinstance(r, dict) and "recovery" in r:
            print(f"{label:22s} score@0 {r['score_at_lambda0']:.4f} nAUC {r['nauc']:.4f} recovery {r['recovery']}")


if __name__ == "__main__":
    main()
