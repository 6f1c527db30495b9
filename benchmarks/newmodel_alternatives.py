"""Other ways to estimate a model added from a few dozen labels, against the Router's rule (issue 21, item 3).

The Router answers for a model added after training with the capability memory's estimate, its prior a line in
the query's difficulty (`runtime.added_models.LocalPrior`). On dynamath that recovers about half of the gap to a
router trained with the model; these are the alternatives tried to recover more, each as the prior of the same
memory estimate (the model's own labelled neighbours still weigh in), on the routers of a finished
`benchmarks/newmodel.py` run (its held-out strongest model, 48 labels, the same 5 label draws, every training seed):

- `own_neighbours`: the model's own 16 nearest labelled queries (a search of its labels alone: in the shared
  search few of them are ever among a query's neighbours), weighted as the memory weighs rows;
- `ridge_on_network`: a ridge regression of its labels on the trained models' network mu_tilde logits, the
  strength chosen by leave-one-out on the labels (which trained models it resembles, per query; the diagnosis's
  `ridge_on_others`, there with fixed strengths on one seed and one draw, `newmodel_diagnose.py`);
- `relative_to_similar`: the mean of the 3 trained models whose outcomes on the labelled queries differ from its
  own least, each shifted by that mean difference;
- `network_offset` (not a prior: the Router's estimate moved): the Router's estimate plus, in logits, the mean over
  the trained models of how far the network's mu_tilde lies from their memory estimate on that query (puts the
  added model on the network's scale);
- `memory_for_every_model` (not a prior either): every model, trained or added, answered by the memory's estimate
  alone, so that one estimator ranks them all.

    python benchmarks/newmodel_alternatives.py DATA_DIR NEWMODEL_OUT_DIR [--into FILE]

Writes the recovery (score at lambda 0 / nAUC) of each rule, the mean over seeds and draws, each seed's beside it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from lr_onnx.export.files import atomic_write_text
from lr_onnx.export.train.trainer import TrainConfig, load_training_set, predict
from lr_onnx.runtime.added_models import sigmoid, untrained_answer
from lr_onnx.runtime.memory import P_CLIP, global_means
from newmodel import (
    DRAWS,
    SEEDS,
    HeldOut,
    _route,
    _trained,
    added_estimates,
    added_model_feat,
    held_out_models,
    recovery,
    seed_dir,
    test_split,
)

LABELS = 48
OWN_K = 16  # own_neighbours: how many of the model's labelled queries a query reads
SIMILAR = 3  # relative_to_similar: how many trained models
RIDGE = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 1e7)  # ridge strengths tried by leave-one-out


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, P_CLIP, 1 - P_CLIP)
    return np.log(p / (1 - p))


def ridge_loo(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """(weights, intercept) of a ridge regression of y on X, its strength of RIDGE chosen by leave-one-out error."""
    mx, my = X.mean(0), y.mean()
    Xc, yc = X - mx, y - my
    best = (np.inf, RIDGE[0])
    for lam in RIDGE:
        H = Xc @ np.linalg.solve(Xc.T @ Xc + lam * np.eye(X.shape[1]), Xc.T)
        err = float((((yc - H @ yc) / (1 - np.diag(H) - 1 / len(y))) ** 2).mean())
        best = min(best, (err, lam))
    w = np.linalg.solve(Xc.T @ Xc + best[1] * np.eye(X.shape[1]), Xc.T @ yc)
    return w, float(my - mx @ w)


def priors(mem, q_lab, y, q_test, mt_lab, mt_test, Y_lab, A_lab) -> dict[str, np.ndarray]:
    """`[T]` each alternative's estimate of the added model on the test queries (before the memory's evidence)."""
    st = mem.settings
    e_lab, e_test = mem.embed(q_lab), mem.embed(q_test)
    sims = e_test @ e_lab.T
    m = min(OWN_K, len(y))
    idx = np.argpartition(-sims, m - 1, axis=1)[:, :m]
    w = np.minimum(1.0, np.exp((np.take_along_axis(sims, idx, 1) - st.s_ref) / st.tau))
    own = ((w * y[idx]).sum(1) + st.kappa * y.mean()) / (w.sum(1) + st.kappa)
    wr, b = ridge_loo(logit(mt_lab), y)
    diff = np.array(
        [(y - Y_lab[:, j])[A_lab[:, j]].mean() if A_lab[:, j].any() else np.nan for j in range(Y_lab.shape[1])]
    )
    spread = np.array(
        [
            ((y - Y_lab[:, j] - diff[j]) ** 2)[A_lab[:, j]].mean() if A_lab[:, j].any() else np.inf
            for j in range(Y_lab.shape[1])
        ]
    )
    near = np.argsort(spread)[:SIMILAR]
    return {
        "own_neighbours": own,
        "ridge_on_network": b + logit(mt_test) @ wr,
        "relative_to_similar": np.mean([mt_test[:, j] + diff[j] for j in near], axis=0),
    }


def one_seed(data_dir: Path, out: Path, cfg: TrainConfig, draws: int) -> dict:
    full = load_training_set(data_dir, slices=cfg.slices, progress=False)
    d = full.data
    test, Y, C, A = test_split(full)
    upper = _route(predict(_trained(data_dir, out / "full", cfg, full, False), full, test)[0], Y, C, A, full.cost_hat)
    h = HeldOut.of(
        data_dir, out, cfg, full, next(n for n, w in held_out_models(full).items() if w == "strongest"), False
    )
    name, k, keep, order, names, P_wo, net = h.name, h.k, h.keep, h.order, h.names, h.P_wo, h.net
    mt_wo = predict(net, P_wo, test)[0]
    lower = _route(mt_wo, Y[:, keep], C[:, keep], A[:, keep], P_wo.cost_hat)
    mem = P_wo.memory
    added = np.arange(len(order)) == len(keep)
    per_rule: dict[str, list] = {}
    for draw in range(draws):
        rows = h.labelled(LABELS, draw)
        feat, c_hat = added_model_feat(P_wo, full, k, rows)
        ok = rows[d.A[rows, k]]
        y = d.Y[ok, k]
        est, cols = added_estimates(mem, full.q[ok], y, full.q[test], names)
        net_mt = predict(net, full, test, avail=A[:, order], model_feat=feat, mem_cols=cols)[0]
        answers = {"added": untrained_answer(net_mt, net_mt, np.zeros_like(net_mt), est, added)[1]}
        ev, ys = np.expm1(cols[:, -1, 1].astype(np.float64)), sigmoid(cols[:, -1, 0])
        g = global_means(mem.with_rows(full.q[ok], name, y), names, [0.5] * len(names))[-1]
        alts = priors(
            mem,
            full.q[ok],
            y,
            full.q[test],
            predict(net, P_wo, ok)[0],
            mt_wo,
            np.nan_to_num(d.Y[ok][:, keep]),
            d.A[ok][:, keep],
        )
        for rule, p in alts.items():  # each as the prior of the memory estimate, as LocalPrior is
            p = np.clip(p, P_CLIP, 1 - P_CLIP)
            mt = net_mt.copy()
            mt[:, -1] = np.clip(ys + mem.settings.kappa * (p - g) / (ev + mem.settings.kappa), P_CLIP, 1 - P_CLIP)
            answers[rule] = mt
        trained = A[:, order][:, :-1]
        moved = np.where(trained, logit(net_mt[:, :-1]) - logit(est[:, :-1]), 0.0).sum(1) / np.maximum(
            trained.sum(1), 1
        )
        answers["network_offset"] = answers["added"].copy()
        answers["network_offset"][:, -1] = sigmoid(logit(est[:, -1]) + moved)
        answers["memory_for_every_model"] = np.where(A[:, order], est, -1.0)
        for rule, mt in answers.items():
            per_rule.setdefault(rule, []).append(
                recovery(lower, _route(mt, Y[:, order], C[:, order], A[:, order], c_hat), upper)
            )
    return {
        "model": name,
        "training_seed": cfg.seed,
        "recovery": {
            r: {key: round(float(np.mean([x[key] for x in v])), 4) for key in v[0]} for r, v in per_rule.items()
        },
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("out_dir", type=Path, help="a finished benchmarks/newmodel.py run (its routers are reused)")
    ap.add_argument("--draws", type=int, default=DRAWS)
    ap.add_argument("--seeds", type=int, default=SEEDS, help="training seeds of the run to read (as newmodel.py's)")
    ap.add_argument("--into", type=Path, default=None, help="record the result under the dataset's name in this JSON")
    a = ap.parse_args(argv)
    base = TrainConfig()
    parts = [
        one_seed(a.data_dir, seed_dir(a.out_dir, i), replace(base, seed=base.seed + i), a.draws) for i in range(a.seeds)
    ]
    rules = list(parts[0]["recovery"])
    res = {
        "data": str(a.data_dir),
        "held_out": parts[0]["model"],
        "labels": LABELS,
        "label_draws": a.draws,
        "training_seeds": len(parts),
        "recovery": {
            r: {
                key: round(float(np.mean([p["recovery"][r][key] for p in parts])), 4)
                for key in ("score_at_lambda0", "nauc")
            }
            for r in rules
        },
        "per_seed": parts,
    }
    if a.into is not None:
        into = json.loads(a.into.read_text(encoding="utf-8")) if a.into.is_file() else {}
        into[a.data_dir.resolve().name] = res
        atomic_write_text(a.into, json.dumps(into, indent=2) + "\n")
    for r, v in res["recovery"].items():
        print(f"{r:22s} recovers {v['score_at_lambda0']:.3f} (score@0) / {v['nauc']:.3f} (nAUC)")


if __name__ == "__main__":
    main()
