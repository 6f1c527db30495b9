"""`lr-onnx evaluate`: LatentRouter against the baselines on one split (method.md §8-9).

Every method is a predicted-score matrix routed by the same policy over the same
lambda grid with realised costs. Lambda is chosen on validation, never on test.
Writes RUN_DIR/metrics.json, frontier.png and report.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ...runtime.policy import LAMBDA_GRID, choose
from . import routing_metrics as M
from ..files import atomic_write_text
from ..train.trainer import TrainingSet, TrainConfig, attach_run_memory, load_router, predict, load_training_set, train
from ..train.rundir import METRICS, RunDir
from .render import plot_frontier, report

METHODS = [  # in the order evaluate computes them, metrics.json's order
    "latentrouter",
    "memory_only",
    "network_only",
    "no_communication",
    "text_only",
    "with_images",
    "no_memory",
    "no_slice_prior",
    "one_memory_setting",
    "pca_space",
    "knn",
    "mf",
    "mlp",
    "irt",
    "task_lookup",
    "best_single",
    "random",
]
USES_DATASET_LABEL = ("task_lookup",)
# ablations retrained from the run's own config with one change each (A0 of method.md, and each lr-onnx addition)
ABLATIONS = (
    ("no_communication", {"layers": 0}),
    ("text_only", {"text_only": True}),
    ("with_images", {"text_only": False}),
    ("no_memory", {"memory": False}),
    ("no_slice_prior", {"slice_prior": False}),
    ("one_memory_setting", {"memory_per_source": False}),  # only where the memory reads a merge per source
    ("pca_space", {"memory_align": False}),  # only where the memory's space was stretched toward the outcomes
)  # baselines that read metadata the router never sees


def sweep(
    scores: np.ndarray, Y: np.ndarray, C: np.ndarray, A: np.ndarray, c_hat: np.ndarray, grid=LAMBDA_GRID
) -> list[dict]:
    """(lambda, mean score, mean realised cost, choices) for every lambda of the grid."""
    out = []
    ok = A.any(axis=1)
    rows = np.flatnonzero(ok)
    for lam in grid:
        ch = choose(scores, np.broadcast_to(c_hat, scores.shape), A, lam)
        out.append(
            {
                "lam": float(lam),
                "score": float(Y[rows, ch[ok]].mean()),
                "cost": float(C[rows, ch[ok]].mean()),
                "choice": ch,
            }
        )
    return out


def summarise(
    points: list[tuple[float, float]], ref: dict, at0: tuple[float, float], rank_at: tuple[float, float]
) -> dict:
    """The metric row of one method."""
    return {
        "nauc": _f(M.nauc(points)),
        "nauc_ref": _f(M.nauc_ref(points)),
        "peak_score": _f(M.peak_score(points)),
        "qnc": _f(M.qnc(points, ref["best_q"], ref["best_c"])),
        "qnc_99": _f(M.qnc(points, ref["best_q"], ref["best_c"], 0.99)),
        "rank_score": _f(M.rank_score(rank_at[1], rank_at[0], ref["cmin"], ref["cmax"])),
        "apgr": _f(M.apgr(points, ref["weak"], ref["strong"])),
        "cpt50": _f(M.cpt(points, ref["weak"], ref["strong"], 0.5)),
        "cpt80": _f(M.cpt(points, ref["weak"], ref["strong"], 0.8)),
        "aiq": _f(M.aiq(points, ref["c_hi"])),
        "score_at_lambda0": _f(at0[1]),
        "cost_at_lambda0": _f(at0[0]),
    }


def evaluate(
    run_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    split: str = "test",
    ablations: bool | tuple[str, ...] = True,
    progress: bool = True,
) -> dict:
    """The run against every baseline and, with `ablations` (True: all of ABLATIONS; or a tuple of their names),
    its retrained ablations, on `split`; writes metrics.json, frontier.png and report.md into the run."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    net, cfg = load_router(run_dir)
    tcfg = TrainConfig.of_run(cfg["train"])
    data_dir = Path(data_dir or cfg["data"])
    P = attach_run_memory(
        load_training_set(data_dir, slices=tcfg.slices, text_only=tcfg.text_only, progress=progress), cfg
    )
    # the baselines read every feature, whatever the router reads (export.train.modality)
    P_base = load_training_set(data_dir, slices=tcfg.slices, progress=False) if tcfg.text_only else P
    d = P.data
    rows = np.flatnonzero(P.masks[split] & d.A.any(axis=1))
    val = np.flatnonzero(P.masks["val"] & d.A.any(axis=1))
    both = np.concatenate([val, rows])
    chat_test, chat_val = P.c_hat_rows(rows), P.c_hat_rows(val)  # per-query expected costs where there is a rule

    scores: dict[str, np.ndarray] = {"latentrouter": predict(net, P, both)[0]}
    if P.memory is not None:  # the two halves of the blend, from the same run
        from ..train.memory import estimate

        scores["memory_only"] = estimate(P.mem_cols[both])
        blend = float(net.memory.blend)
        net.memory.blend.fill_(1.0)
        scores["network_only"] = predict(net, P, both)[0]
        net.memory.blend.fill_(blend)
    if ablations:
        for name, over in ABLATIONS:
            if ablations is not True and name not in ablations:
                continue
            if "text_only" in over and not any(d.images):
                continue  # text-only data: both modality ablations are the router itself
            if over.get("text_only") == tcfg.text_only:
                scores[name] = scores["latentrouter"]  # the modality the router reads: the router itself
                continue
            if over.get("memory") is False and P.memory is None:
                continue  # the router has no memory: it is this ablation
            if "memory_per_source" in over and (P.memory is None or P.memory.sources is None):
                continue  # one setting for the whole memory already: the router is this ablation
            if "memory_align" in over and (P.memory is None or not P.memory_align):
                continue  # the PCA space already: the router is this ablation
            sub = run_dir / "ablations" / name
            abl = TrainConfig(**{**cfg["train"], **over})
            if abl.text_only != tcfg.text_only:
                Pa = load_training_set(data_dir, slices=tcfg.slices, text_only=abl.text_only, progress=False)
            elif not abl.memory_per_source:  # the run's own setting, chosen on validation, for every source
                Pa = replace(P, memory=None, mem_cols=None)
                Pa.attach_memory(P.memory.settings, P.memory_size, align=P.memory_align)
            elif not abl.memory_align:  # the memory's settings chosen again on validation, in the PCA space
                Pa = replace(P, memory=None, mem_cols=None)
            else:
                Pa = replace(P, memory=P.memory if abl.memory else None, mem_cols=P.mem_cols if abl.memory else None)
            if not RunDir(sub).trained:
                train(data_dir, sub, abl, prepared=Pa, progress=progress)
            anet, acfg = load_router(sub)
            if abl.memory and Pa.memory is None:
                attach_run_memory(Pa, acfg)
            scores[name] = predict(anet, Pa, both)[0]
    from tqdm import tqdm

    from .baselines import best_single_scores, irt_scores, knn_scores, linear_mf_scores, mlp_scores, task_lookup_scores

    baselines = {  # the MLP and IRT have their own seed: the bar does not move with the router's
        "knn": knn_scores,
        "mf": linear_mf_scores,
        "mlp": mlp_scores,
        "irt": irt_scores,
        "task_lookup": task_lookup_scores,
        "best_single": best_single_scores,
    }
    bar = tqdm(baselines.items(), desc="baselines", total=len(baselines), disable=not progress, leave=False)
    for name, fit in bar:  # minutes on ten thousand queries: say which one is running
        bar.set_postfix_str(name)
        scores[name] = fit(P_base, both)

    Yv, Cv, Av = np.nan_to_num(d.Y[val]), np.nan_to_num(d.C[val]), d.A[val]
    Y, C, A = np.nan_to_num(d.Y[rows]), np.nan_to_num(d.C[rows]), d.A[rows]
    names = d.model_names
    train_rows = P.masks["train"]
    single_train = M.single_models(d.Y[train_rows], d.C[train_rows], d.A[train_rows])
    bounds = _cost_bounds(data_dir, single_train)
    cal = P.masks["cal"]
    single_cal = M.single_models(d.Y[cal], d.C[cal], d.A[cal])
    single = M.single_models(Y, C, A)
    weak_k = int(np.nanargmin([s["cost"] for s in single_cal]))
    strong_k = int(np.nanargmax([s["score"] for s in single_cal]))
    b = M.best_single(Y, C, A)
    oq, oc = M.routed_means(Y, C, M.oracle_choice(Y, C, A))
    all_costs = [s["cost"] for s in single] + [oc]
    ref = {
        "best_q": single[b]["score"],
        "best_c": single[b]["cost"],
        "cmin": bounds[0],
        "cmax": bounds[1],
        "weak": (single[weak_k]["cost"], single[weak_k]["score"]),
        "strong": (single[strong_k]["cost"], single[strong_k]["score"]),
    }

    nv = len(val)
    curves, methods, chosen_lam = {}, {}, {}
    for name, S in scores.items():
        sv, st = S[:nv], S[nv:]
        test_curve = sweep(st, Y, C, A, chat_test)
        val_curve = sweep(sv, Yv, Cv, Av, chat_val)
        curves[name] = test_curve
        all_costs += [p["cost"] for p in test_curve]
        # lambda for the rank score: the one maximising S on validation (never test)
        vs = [M.rank_score(p["score"], p["cost"], *bounds) for p in val_curve]
        chosen_lam[name] = int(np.argmax(vs))
        if name == "latentrouter":
            presets = budget_presets(val_curve, test_curve, Yv, Cv, Av, chosen_lam[name])
    ref["c_hi"] = max(all_costs)
    for name, curve in curves.items():
        pts = [(p["cost"], p["score"]) for p in curve]
        j = chosen_lam[name]
        methods[name] = summarise(
            pts, ref, (curve[0]["cost"], curve[0]["score"]), (curve[j]["cost"], curve[j]["score"])
        )
        methods[name]["lambda_val"] = float(LAMBDA_GRID[j])
        methods[name]["score_at_lambda_val"] = _f(curve[j]["score"])
        methods[name]["cost_at_lambda_val"] = _f(curve[j]["cost"])
        if name in USES_DATASET_LABEL:
            methods[name]["uses_dataset_label"] = True
    methods["latentrouter"]["presets"] = presets
    rq, rc = M.random_router(Y, C, A)
    methods["random"] = summarise([(rc, rq)], ref, (rc, rq), (rc, rq))

    out = {
        "split": split,
        "rows": int(len(rows)),
        "data": str(data_dir),
        "has_images": bool(any(d.images)),
        "n_unroutable": int((P.masks[split] & ~d.A.any(axis=1)).sum()),
        "methods": methods,
        "best_single": {"name": names[b], "score": _f(single[b]["score"]), "cost": _f(single[b]["cost"])},
        "oracle": {"score": _f(oq), "cost": _f(oc)},
        "single_models": {n: {"score": _f(s["score"]), "cost": _f(s["cost"])} for n, s in zip(names, single)},
        "rank_score_bounds": {"cmin": bounds[0], "cmax": bounds[1]},
        "weak_strong": {"weak": names[weak_k], "strong": names[strong_k]},
        "per_dataset": per_dataset(P, rows, curves, chosen_lam["latentrouter"]),
        "pool_shift": pool_shift(net, P, rows, single_cal),
        "collapse": collapse(curves["latentrouter"], Y, C, A, P, single[b]["cost"]),
        "uncertainty": uncertainty_quality(net, P, rows),
        "per_query_cost": per_query_cost(P, rows, scores["latentrouter"][nv:], Y, C, A, ref, names),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    RunDir.of(run_dir).write_json(METRICS, out, allow_nan=False)
    plot_frontier(run_dir / "frontier.png", curves, out)
    atomic_write_text(run_dir / "report.md", report(out))
    return out


BUDGET_FRACTIONS = (0.5, 0.25, 0.1)


def budget_presets(val_curve, test_curve, Yv, Cv, Av, j_val: int) -> dict:
    """Named operating points for the bundle, all chosen on validation (test score and cost only recorded):
    `quality` (lambda 0), `balanced` (the rank-score lambda) and `budget_P`: the best validation score
    among the lambdas whose validation cost stays within P% of the best single model's cost."""

    def point(j, **extra):
        return {
            "lambda": float(LAMBDA_GRID[j]),
            **extra,
            "val_score": _f(val_curve[j]["score"]),
            "val_cost": _f(val_curve[j]["cost"]),
            "test_score": _f(test_curve[j]["score"]),
            "test_cost": _f(test_curve[j]["cost"]),
        }

    cap = M.single_models(Yv, Cv, Av)[M.best_single(Yv, Cv, Av)]["cost"]
    out = {"quality": point(0), "balanced": point(j_val)}
    for f in BUDGET_FRACTIONS:
        ok = [j for j, p in enumerate(val_curve) if p["cost"] <= f * cap]
        if ok:
            j = max(ok, key=lambda j: (val_curve[j]["score"], -val_curve[j]["cost"]))
            out[f"budget_{round(100 * f)}"] = point(j, max_cost_fraction_of_best_single=f)
    return out


def per_query_cost(P: TrainingSet, rows, mt, Y, C, A, ref: dict, names: list[str]) -> dict:
    """How good the per-query cost prediction is (MAPE against the recorded costs, per model), and whether
    routing on it changes LatentRouter's frontier against the per-model constant (same scores, policy only)."""
    if P.row_cost is None:
        return {"used": False, "why": "no model of this dataset has an image-token rule and prices"}
    from ..train.pricing import cost_error

    out = {
        "used": True,
        "models_with_a_rule": [n for n, e in zip(names, P.cost_model) if e["output_tokens"] is not None],
        "output_tokens": {n: e["output_tokens"] for n, e in zip(names, P.cost_model) if e["output_tokens"] is not None},
        "mape_per_model": cost_error(P.row_cost[rows], P.data.C[rows], P.data.A[rows], names),
        "mape_per_model_constant": cost_error(
            np.broadcast_to(P.e_bar, (len(rows), len(names))), P.data.C[rows], P.data.A[rows], names
        ),
    }
    for label, c_hat in (("per_query", P.c_hat_rows(rows)), ("constant", np.broadcast_to(P.cost_hat, A.shape))):
        curve = sweep(mt, Y, C, A, c_hat)
        pts = [(p["cost"], p["score"]) for p in curve]
        out[label] = {"nauc": _f(M.nauc(pts)), "qnc": _f(M.qnc(pts, ref["best_q"], ref["best_c"]))}
    return out


def uncertainty_quality(net, P: TrainingSet, rows) -> dict:
    """§8.8 uncertainty quality of LatentRouter's head on the binary (query, model) entries of `rows`."""
    mt, sigma, mu = predict(net, P, rows, with_mu=True)
    Y = P.data.Y[rows]
    ok = P.data.A[rows] & np.isin(Y, (0.0, 1.0))
    u = M.uncertainty(mt[ok], mu[ok], sigma[ok], Y[ok])
    return {k: (_f(v) if isinstance(v, float) else v) for k, v in u.items()}


def per_dataset(P: TrainingSet, rows, curves: dict, j_val) -> dict:
    """Per `dataset` label and, for merged data (labels `source/task` from several sources), per source:
    best single, oracle, LatentRouter at lambda 0 and at the validation lambda, every method at lambda 0. Sources
    that are the labels themselves (no `source/task` labels) are not listed twice."""
    d = P.data
    ds = np.array(d.dataset)[rows]
    sources = np.array([lab.split("/", 1)[0] for lab in ds])
    groups = {name: ds == name for name in sorted(set(ds))}
    if len(set(sources)) > 1 and set(sources) != set(ds):
        groups.update({f"source:{src}": sources == src for src in sorted(set(sources))})
    curve = curves["latentrouter"]
    res = {}
    for name, sel in groups.items():
        r = rows[sel]
        Y, C, A = np.nan_to_num(d.Y[r]), np.nan_to_num(d.C[r]), d.A[r]
        b = M.best_single(Y, C, A)
        single = M.single_models(Y, C, A)
        oq, oc = M.routed_means(Y, C, M.oracle_choice(Y, C, A))
        res[name] = {
            "rows": int(sel.sum()),
            "best_single": {"name": d.model_names[b], "score": _f(single[b]["score"])},
            "oracle": _f(oq),
        }
        for label, j in (("lambda0", 0), ("lambda_val", j_val)):
            q, c = M.routed_means(Y, C, curve[j]["choice"][sel])
            res[name][f"latentrouter_score_{label}"] = _f(q)
            res[name][f"latentrouter_cost_{label}"] = _f(c)
        res[name]["score_at_lambda0"] = {
            m: _f(M.routed_means(Y, C, cv[0]["choice"][sel])[0]) for m, cv in curves.items()
        }
    return res


def pool_shift(net, P: TrainingSet, rows, single_cal) -> dict:
    """Mask models out of the pool (never slice columns) and re-route; specs use R_cal statistics (§8.8). Every spec
    keeps at least one model (a pool of one has only `full`; random drops need three)."""
    d = P.data
    K = d.k
    specs = {"full": np.ones(K, bool)}
    if K >= 2:  # one model out at a time: the strongest, the cheapest, then each in turn
        strongest = int(np.nanargmax([s["score"] for s in single_cal]))
        cheapest = int(np.nanargmin([s["cost"] for s in single_cal]))
        drop = {"drop_strongest": strongest, "drop_cheapest": cheapest}
        drop.update({f"leave_one_out:{n}": k for k, n in enumerate(d.model_names)})
        for label, k in drop.items():
            specs[label] = np.arange(K) != k
    rng = np.random.default_rng(20260308)
    for frac in (0.3, 0.5) if K >= 3 else ():
        for draw in range(5):
            drop = max(1, int(round(frac * K)))
            drop = min(drop, K - 2)
            keep = np.ones(K, bool)
            keep[rng.choice(K, size=drop, replace=False)] = False
            specs[f"drop_{int(frac * 100)}pct#{draw}"] = keep
    Y, C = np.nan_to_num(d.Y[rows]), np.nan_to_num(d.C[rows])
    full_q = None
    out = {}
    for label, keep in specs.items():
        A = d.A[rows] & keep
        mt, _ = predict(net, P, rows, avail=A)
        curve = sweep(mt, Y, C, A, P.c_hat_rows(rows))
        b = M.best_single(Y, C, A)
        oq, _ = M.routed_means(Y, C, M.oracle_choice(Y, C, A))
        q0 = curve[0]["score"]
        full_q = q0 if label == "full" else full_q
        out[label] = {
            "score_at_lambda0": _f(q0),
            "nauc": _f(M.nauc([(p["cost"], p["score"]) for p in curve])),
            "best_single": _f(M.single_models(Y, C, A)[b]["score"]),
            "oracle": _f(oq),
            "regret_vs_full": _f(full_q - q0),
        }
    for prefix in ("drop_30pct", "drop_50pct"):
        vals = [v["score_at_lambda0"] - v["best_single"] for k, v in out.items() if k.startswith(prefix)]
        out[f"{prefix}_mean_gain_over_best_single"] = _f(float(np.mean(vals))) if vals else None
    return out


def collapse(curve, Y, C, A, P: TrainingSet, c_best: float) -> dict:
    """Share of queries sent to the most expensive available model, per lambda (§8.8)."""
    e = P.e_bar
    rows_ok = A.any(axis=1)
    priciest = np.array([np.flatnonzero(a)[np.argmax(e[a])] if a.any() else -1 for a in A])
    shares = [float((p["choice"][rows_ok] == priciest[rows_ok]).mean()) for p in curve]
    orc = M.oracle_choice(Y, C, A)
    first = next((j for j, p in enumerate(curve) if p["cost"] <= c_best), None)
    share_vectors = {
        f"{p['lam']:.4g}": np.bincount(p["choice"][rows_ok], minlength=A.shape[1]).tolist() for p in curve[::10]
    }
    return {
        "share_most_expensive_per_lambda": [_f(s) for s in shares],
        "share_at_lambda0": _f(shares[0]),
        "oracle_share": _f(float((orc[rows_ok] == priciest[rows_ok]).mean())),
        "share_at_first_lambda_under_best_single_cost": _f(shares[first]) if first is not None else None,
        "choice_counts_every_10th_lambda": share_vectors,
    }


def _cost_bounds(data_dir: Path, single_train) -> tuple[float, float]:
    p = Path(data_dir) / "cost_bounds.json"
    if p.is_file():
        b = json.loads(p.read_text())
        return float(b["cmin"]), float(b["cmax"])
    costs = [s["cost"] for s in single_train if np.isfinite(s["cost"])]
    pos = [c for c in costs if c > 0]
    return (min(pos) if pos else 1e-12), max(costs)


def _f(x):
    if x is None:
        return None
    x = float(x)
    if np.isnan(x):
        return None
    if np.isinf(x):
        return "inf" if x > 0 else "-inf"  # JSON has no infinity; e.g. QNC when best-single quality is never reached
    return float(f"{x:.6g}")
