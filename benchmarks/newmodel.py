"""The new-model protocol of method.md §8.8: how well does adding a model without retraining work?

For three held-out models (the strongest and the cheapest by R_cal, plus one seeded random
other), train with the model excluded (no column, no profile), add it back from n in {24, 48, 96}
of its labelled R_cal queries (spread over the slices as `models propose` picks them, profiled by
the same code as `models add`), and route the full test pool. The router trained with the
model is the upper reference, the one without it (routing the pool minus the model) the lower.
Each size is drawn `--draws` times (which queries a user happens to label moves the result a lot),
and the whole protocol runs for `--seeds` training seeds (both routers retrained per seed; the label
draws are the same); the recovery recorded is the mean over seeds of each seed's mean over draws, each
seed's and each draw's numbers beside it.

    python benchmarks/newmodel.py DATA_DIR OUT_DIR [--run FULL_RUN] [--sizes 24 48 96] [--draws 5]
                [--seeds 3] [--which strongest] [--pick slices|difficulty] [--into benchmarks/results/newmodel_real.json]

`--pick difficulty` draws the labels at spaced quantiles of the trained models' mean outcome within each slice
(`spread_by_difficulty`) instead of at random, on the same routers and draw seeds.

Writes OUT_DIR/newmodel.json (newmodel_difficulty.json with --pick difficulty); trained routers are kept in OUT_DIR (training seed i > 0 in OUT_DIR/seed{i})
and reused on a rerun.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from typing import Any

import numpy as np

from lr_onnx.runtime.added_models import LocalPrior, memory_estimates, untrained_answer
from lr_onnx.runtime.memory import global_means
from lr_onnx.runtime.profiles import assign_slices, new_model_profile
from lr_onnx.export.evaluate import routing_metrics as M
from lr_onnx.export.evaluate.report import sweep
from lr_onnx.export.files import atomic_write_text
from lr_onnx.export.train.pool import spread_over_slices
from lr_onnx.export.train.trainer import (
    TrainingSet,
    TrainConfig,
    attach_run_memory,
    load_router,
    predict,
    load_training_set,
    train,
)
from lr_onnx.export.train.rundir import RunDir

SIZES = (24, 48, 96)
PICK_SEED = 20260308
RULES = ("added", "added_global_mean_prior", "added_line_unshrunk")  # the Router's rule, then its ablations
DRAWS = 5  # label draws per size (seeds PICK_SEED + 0..4): one draw of 48 labels swings recovery by +-0.15
SEEDS = 3  # training seeds (TrainConfig.seed + 0..2), as the grid's real cells
PICK = "slices"  # how the labelled queries are picked: "slices" (models propose) or "difficulty" (its variant)


def held_out_models(P: TrainingSet, seed: int = PICK_SEED) -> dict[str, str]:
    """{model: why}: strongest and cheapest by R_cal mean score / cost, plus one seeded random other."""
    d, cal = P.data, P.masks["cal"]
    single = M.single_models(d.Y[cal], d.C[cal], d.A[cal])
    strong = int(np.nanargmax([s["score"] for s in single]))
    cheap = int(np.nanargmin([s["cost"] for s in single]))
    rest = [k for k in range(d.k) if k not in (strong, cheap)]
    pick = {d.model_names[strong]: "strongest", d.model_names[cheap]: "cheapest"}
    if rest:
        pick[d.model_names[int(np.random.default_rng(seed).choice(rest))]] = "random"
    return pick


def seed_dir(out: Path, i: int) -> Path:
    """Where training seed i's routers live: OUT_DIR itself for the first, OUT_DIR/seed{i} for the others."""
    return out if i == 0 else out / f"seed{i}"


def test_split(full: TrainingSet) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(test rows with any outcome, their scores, costs and availability `[T, K]`) of the full pool."""
    d = full.data
    test = np.flatnonzero(full.masks["test"] & d.A.any(axis=1))
    return test, np.nan_to_num(d.Y[test]), np.nan_to_num(d.C[test]), d.A[test]


@dataclass
class HeldOut:
    """One held-out model on one training seed: the router trained without it (`net` on `P_wo`) and the R_cal
    rows it answered, from which its labelled queries are drawn (`labelled`)."""

    full: TrainingSet
    P_wo: TrainingSet
    net: Any
    name: str
    cal: np.ndarray
    slices: np.ndarray

    @classmethod
    def of(cls, data_dir: Path, out: Path, cfg: TrainConfig, full: TrainingSet, name: str, progress: bool):
        """`name` held out: its router trained into (or reused from) out/without_{name}."""
        P_wo = load_training_set(data_dir, slices=cfg.slices, progress=False, exclude=(name,))
        net = _trained(data_dir, out / f"without_{name}", cfg, P_wo, progress)
        cal = np.flatnonzero(full.masks["cal"] & full.data.A[:, full.data.model_names.index(name)])
        return cls(full, P_wo, net, name, cal, assign_slices(full.q[cal], P_wo.space.centroids))

    @property
    def k(self) -> int:  # its column in the full pool
        return self.full.data.model_names.index(self.name)

    @property
    def keep(self) -> list[int]:  # the trained pool's columns
        return [j for j in range(self.full.data.k) if j != self.k]

    @property
    def order(self) -> list[int]:  # the pool with the model added back, last
        return self.keep + [self.k]

    @property
    def names(self) -> list[str]:
        return [self.full.data.model_names[j] for j in self.order]

    def labelled(self, n: int, draw: int, pick: str = PICK) -> np.ndarray:
        """The n R_cal rows a user labels on label draw `draw`, spread over the slices as `models propose` does
        (`pick` "difficulty": at spaced quantiles of the trained models' mean outcome within each slice)."""
        S, seed = self.P_wo.space.S, PICK_SEED + draw
        if pick == "difficulty":
            Y, A = np.nan_to_num(self.full.data.Y[self.cal][:, self.keep]), self.full.data.A[self.cal][:, self.keep]
            diff = (Y * A).sum(axis=1) / np.maximum(A.sum(axis=1), 1)
            return np.array([i for i, _ in spread_by_difficulty(self.cal, self.slices, S, n, seed, diff)])
        return np.array([i for i, _ in spread_over_slices(self.cal, self.slices, S, n, seed)])


def spread_by_difficulty(
    rows: np.ndarray, slices: np.ndarray, S: int, n: int, seed: int, difficulty: np.ndarray
) -> list[tuple[int, int]]:
    """`models propose`'s `spread_over_slices` (ceil(n / S) rows per slice, a seeded draw of n when that is more),
    but a slice's rows taken at evenly spaced quantiles of `difficulty` (the trained models' mean outcome on each
    row) from a seeded offset instead of at random, so that they span its easy and hard queries. Not adopted
    (`newmodel_pick_difficulty.json`)."""
    per, rng = math.ceil(n / S), np.random.default_rng(seed)
    picked = []
    for s in range(S):
        members = rows[slices == s]
        if len(members) <= per:
            picked += [(int(i), s) for i in np.sort(members)]
            continue
        ties = rng.random(len(members))
        order = members[np.lexsort((ties, difficulty[slices == s]))]  # hardest first, ties at random
        at = ((np.arange(per) + rng.random()) * len(order) / per).astype(int)
        picked += [(int(i), s) for i in np.sort(order[at])]
    if len(picked) > n:
        picked = [picked[j] for j in np.sort(rng.choice(len(picked), n, replace=False))]
    return picked


def _route(mt: np.ndarray, Y, C, A, c_hat) -> dict:
    curve = sweep(mt, Y, C, A, c_hat)
    return {
        "nauc": M.nauc([(p["cost"], p["score"]) for p in curve]),
        "score_at_lambda0": curve[0]["score"],
        "cost_at_lambda0": curve[0]["cost"],
        "choice_at_lambda0": curve[0]["choice"],
    }


def _summary(r: dict, share_of: int | None = None) -> dict:
    out = {k: round(float(r[k]), 6) for k in ("nauc", "score_at_lambda0", "cost_at_lambda0")}
    if share_of is not None:
        out["share_routed_to_model_at_lambda0"] = round(float(np.mean(r["choice_at_lambda0"] == share_of)), 4)
    return out


def added_model_feat(
    P_wo: TrainingSet, full: TrainingSet, k_full: int, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Model features `[K, P_in]` and normalised costs `[K]`: the trained pool plus the held-out model profiled
    from its outcomes on `rows` (§3.5 with the frozen slices and standardisation; cost = mean observed cost)."""
    d, space = full.data, P_wo.space
    ok = rows[d.A[rows, k_full]]
    new = new_model_profile(
        space,
        full.q[ok],
        d.Y[ok, k_full],
        d.C[ok, k_full],
        d.Lat[ok, k_full],
        d.Tok[ok, k_full],
        [d.question[i] for i in ok],
        price_in=None,
        price_out=None,
        pool_mean=float(np.mean(P_wo.raw_profiles[:, 0])),
    )
    e_bar = np.append(P_wo.e_bar, new["e_bar"])
    return space.model_feat(np.vstack([P_wo.raw_profiles, new["raw"]]), e_bar), e_bar / space.cost_scale


def added_estimates(mem, q_lab, y, q_test, names: list[str], rule: str = "added"):
    """(estimates `[B, K]`, memory columns `[B, K, COLUMNS]`) on the test queries `q_test` for the pool `names`, whose
    last model was added from its outcomes `y` on the labelled queries `q_lab`, as `models add` and the Router do:
    its rows join the memory `mem`, and its estimate's prior is fitted on the trained models' local difficulty
    (`LocalPrior`). The ablations (`RULES`): `added_global_mean_prior`, its global mean as the prior (the rule
    before); `added_line_unshrunk`, the line's least-squares slope without its shrinkage."""
    grown = mem.with_rows(q_lab, names[-1], y)
    cols = grown.columns(q_test, names, blas=True)
    lab = mem.columns(q_lab, names[:-1], blas=True)
    lp = LocalPrior.fit(lab, y, names[:-1], [False] * (len(names) - 1), shrink=rule != "added_line_unshrunk")
    priors = [None] * (len(names) - 1) + [None if rule == "added_global_mean_prior" else lp]
    est = memory_estimates(cols, names, global_means(grown, names, [0.5] * len(names)), grown.settings.kappa, priors)
    return est, cols


def _trained(data_dir: Path, run_dir: Path, cfg: TrainConfig, P: TrainingSet, progress: bool):
    """The router of `run_dir` (trained on `P` first if absent), with `P` given the run's memory."""
    if not RunDir(run_dir).trained:
        train(data_dir, run_dir, cfg, prepared=P, progress=progress)
    net, run_cfg = load_router(run_dir)
    if net.cfg.memory and P.memory is None:
        attach_run_memory(P, run_cfg)
    return net


def mean_over_draws(per_draw: list[dict]) -> dict:
    """The draws' mean of every number (recovery: of each part), with each draw's own numbers kept beside it."""
    out = {k: round(float(np.mean([r[k] for r in per_draw])), 4) for k in per_draw[0] if k != "recovery"}
    out["queries"] = per_draw[0]["queries"]
    out["recovery"] = {}
    for key in per_draw[0]["recovery"]:
        vals = [r["recovery"][key] for r in per_draw if r["recovery"][key] is not None]  # None: no gap to close
        out["recovery"][key] = round(float(np.mean(vals)), 4) if vals else None
    out["draws"] = len(per_draw)
    out["per_draw"] = per_draw
    return out


def mean_of(parts: list[dict]) -> dict:
    """Key by key, the mean of every number of `parts` (dicts of one shape: one per training seed); None where a
    part has None (no gap to close); strings kept, lists (each seed's draws) left to the parts themselves."""
    out: dict = {}
    for key, v in parts[0].items():
        vals = [p[key] for p in parts]
        if isinstance(v, dict):
            out[key] = mean_of(vals)
        elif isinstance(v, str) or all(x == v for x in vals):  # a count every seed shares stays as it is
            out[key] = v
        elif isinstance(v, (int, float)) or v is None:
            out[key] = None if any(x is None for x in vals) else round(float(np.mean(vals)), 4)
    return out


def recovery(lower: dict, added: dict, upper: dict) -> dict:
    """Share of the gap between the router without the model and the one trained with it that adding it back closes."""
    out = {}
    for key in ("score_at_lambda0", "nauc"):
        gap = upper[key] - lower[key]
        out[key] = round(float((added[key] - lower[key]) / gap), 4) if abs(gap) > 1e-9 else None
    return out


def run(
    data_dir: Path,
    out: Path,
    *,
    full_run: Path | None = None,
    sizes=SIZES,
    cfg: TrainConfig | None = None,
    which: tuple[str, ...] = ("strongest", "cheapest", "random"),
    draws: int = DRAWS,
    seeds: int = SEEDS,
    progress: bool = True,
    pick: str = PICK,
) -> dict:
    """The protocol for training seeds cfg.seed + 0..seeds-1 (seed i > 0's routers in out/seed{i}), averaged; written
    to out/newmodel.json (out/newmodel_{pick}.json for another pick rule, so both can share the routers)."""
    cfg = cfg or TrainConfig()
    parts = [
        run_seed(
            data_dir,
            seed_dir(out, i),
            full_run=full_run if i == 0 else None,
            sizes=sizes,
            cfg=replace(cfg, seed=cfg.seed + i),
            which=which,
            draws=draws,
            progress=progress,
            pick=pick,
        )
        for i in range(seeds)
    ]
    first = parts[0]
    result = {k: first[k] for k in ("data", "test_rows", "sizes", "label_draws", "full_run")}
    result.update(
        pick=pick, training_seeds=seeds, upper_all_models=mean_of([p["upper_all_models"] for p in parts]), models={}
    )
    for name in parts[0]["models"]:
        entry = mean_of([p["models"][name] for p in parts])
        result["models"][name] = {**entry, "per_seed": [p["models"][name] for p in parts]}
    name = "newmodel.json" if pick == PICK else f"newmodel_{pick}.json"
    atomic_write_text(out / name, json.dumps(result, indent=2) + "\n")
    return result


def run_seed(
    data_dir: Path,
    out: Path,
    *,
    full_run: Path | None,
    sizes,
    cfg: TrainConfig,
    which: tuple[str, ...],
    draws: int,
    progress: bool,
    pick: str = PICK,
) -> dict:
    """The protocol for one training seed (`cfg.seed`), its routers trained into (or reused from) `out`."""
    full = load_training_set(data_dir, slices=cfg.slices, progress=progress)
    d = full.data
    test, Y, C, A = test_split(full)
    full_run = full_run or out / "full"
    upper = _route(predict(_trained(data_dir, full_run, cfg, full, progress), full, test)[0], Y, C, A, full.cost_hat)
    result = {
        "data": str(data_dir),
        "test_rows": int(len(test)),
        "sizes": list(sizes),
        "label_draws": draws,
        "training_seed": cfg.seed,
        "full_run": str(full_run),
        "upper_all_models": _summary(upper),
        "models": {},
    }
    for name, why in held_out_models(full).items():
        if why not in which:
            continue
        h = HeldOut.of(data_dir, out, cfg, full, name, progress)
        k, keep, order, P_wo, net = h.k, h.keep, h.order, h.P_wo, h.net
        lower = _route(predict(net, P_wo, test)[0], Y[:, keep], C[:, keep], A[:, keep], P_wo.cost_hat)
        entry = {"why": why, "upper": _summary(upper, share_of=k), "lower_without": _summary(lower)}
        for n in sizes:
            per_draw: dict[str, list] = {rule: [] for rule in RULES}
            for draw in range(draws):  # label draws: which n queries the user happened to label
                rows = h.labelled(n, draw, pick)
                feat, c_hat = added_model_feat(P_wo, full, k, rows)
                names, ok = h.names, rows[d.A[rows, k]]
                rules = dict.fromkeys(RULES)
                cols = None
                if P_wo.memory is not None:  # as `models add` does: its labelled queries join the memory
                    for rule in RULES:
                        rules[rule], cols = added_estimates(
                            P_wo.memory, full.q[ok], d.Y[ok, k], full.q[test], names, rule
                        )
                net_mt = predict(net, full, test, avail=A[:, order], model_feat=feat, mem_cols=cols)[0]
                for key, est in rules.items():
                    mt = net_mt
                    if est is not None:  # as the Router does: the added model gets the memory's answer
                        added = np.arange(len(order)) == len(keep)
                        mt = untrained_answer(net_mt, net_mt, np.zeros_like(net_mt), est, added)[1]
                    r = _route(mt, Y[:, order], C[:, order], A[:, order], c_hat)
                    per_draw[key].append(
                        {
                            "queries": int(len(rows)),
                            **_summary(r, share_of=len(keep)),
                            "recovery": recovery(lower, r, upper),
                            "observed_score": round(float(d.Y[rows, k].mean()), 4),
                            "mean_mu_tilde_on_test": round(float(mt[:, -1][A[:, k]].mean()), 4),
                            "observed_score_on_test": round(float(Y[A[:, k], k].mean()), 4),
                        }
                    )
            for key, draws_of in per_draw.items():
                entry.setdefault(key, {})[str(n)] = mean_over_draws(draws_of)
        result["models"][name] = entry
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument(
        "--run",
        type=Path,
        default=None,
        help="a run trained on all models with the default config "
        "(the upper reference); trained into OUT_DIR/full when absent",
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--draws", type=int, default=DRAWS, help="label draws per size; recovery is their mean")
    ap.add_argument("--seeds", type=int, default=SEEDS, help="training seeds; recovery is the mean over them")
    ap.add_argument(
        "--which",
        nargs="+",
        default=["strongest", "cheapest", "random"],
        choices=["strongest", "cheapest", "random"],
        help="which held-out models to measure",
    )
    ap.add_argument(
        "--pick",
        choices=["slices", "difficulty"],
        default=PICK,
        help="how the labelled queries are picked: spread over the slices at random (models propose), or at spaced "
        "quantiles of the trained models' mean outcome within each slice",
    )
    ap.add_argument(
        "--into",
        type=Path,
        default=None,
        help="also record the result under the dataset's name in this JSON file (e.g. "
        "benchmarks/results/newmodel_real.json), beside the other datasets' results",
    )
    a = ap.parse_args(argv)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    res = run(
        a.data_dir,
        a.out_dir,
        full_run=a.run,
        sizes=a.sizes,
        which=tuple(a.which),
        draws=a.draws,
        seeds=a.seeds,
        pick=a.pick,
    )
    if a.into is not None:
        into = json.loads(a.into.read_text(encoding="utf-8")) if a.into.is_file() else {}
        into[a.data_dir.resolve().name] = res
        atomic_write_text(a.into, json.dumps(into, indent=2) + "\n")
    up = res["upper_all_models"]
    print(f"all models (upper): nAUC {up['nauc']:.4f}  score@0 {up['score_at_lambda0']:.4f}")
    for name, e in res["models"].items():
        lo = e["lower_without"]
        print(
            f"{name} ({e['why']}): without nAUC {lo['nauc']:.4f} score@0 {lo['score_at_lambda0']:.4f}; "
            f"trained with it: share {e['upper']['share_routed_to_model_at_lambda0']:.3f}"
        )
        for key, r in [(rule, r) for rule in RULES for r in e[rule].values()]:
            print(
                f"  {key} from {r['queries']:3d} queries: nAUC {r['nauc']:.4f} score@0 {r['score_at_lambda0']:.4f} "
                f"share {r['share_routed_to_model_at_lambda0']:.3f}  mean mu_tilde {r['mean_mu_tilde_on_test']:.3f} "
                f"(observed {r['observed_score_on_test']:.3f}); recovers {r['recovery']}"
            )


if __name__ == "__main__":
    main()
