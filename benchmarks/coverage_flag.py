"""How the out-of-coverage flag behaves (issue 13 §3): `python benchmarks/coverage_flag.py BUNDLE NAME=DIR ...`

For each dataset given (a native folder; its test split when it has one, else every row), route every
query with the bundle (the served path: ONNX Runtime, per-query costs) and report the share flagged out
of coverage, the similarity quantiles, and, where the dataset's outcomes cover the bundle's models, the
realised score of the routed choice (lambda 0) on flagged vs unflagged queries next to the best single
model on the same queries. Writes benchmarks/results/coverage.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lr_onnx.runtime.router import Router
from lr_onnx.export.data.format import load_dataset
from lr_onnx.export.files import atomic_write_text


def measure(router: Router, data_dir: Path, limit: int | None = None) -> dict:
    data = load_dataset(data_dir)
    rows = [i for i in range(data.n) if not data.has_split or data.split[i] == "test"][:limit]
    decisions = router.route_many([(data.images[i], data.question[i]) for i in rows], batch_size=64, lam=0.0)
    sim = np.array([d.coverage["similarity"] for d in decisions])
    flag = np.array([d.coverage["out_of_coverage"] for d in decisions])
    out = {
        "data": str(data_dir),
        "queries": len(rows),
        "with_images": int(sum(bool(data.images[i]) for i in rows)),
        "flagged": int(flag.sum()),
        "flag_rate": round(float(flag.mean()), 4),
        "similarity": {f"p{p}": round(float(np.percentile(sim, p)), 4) for p in (1, 5, 50, 95)},
        "saturated": saturation(router, decisions),
    }
    cols = {n: data.model_names.index(n) for n in router.names if n in data.model_names}
    if len(cols) >= 2:
        Y, A = data.Y[rows], data.A[rows]
        got = np.array(
            [
                Y[j, cols[d.model]] if d.model in cols and A[j, cols[d.model]] else np.nan
                for j, d in enumerate(decisions)
            ]
        )
        shared = list(cols.values())
        means = np.nanmean(np.where(A[:, shared], Y[:, shared], np.nan), axis=0)
        best = shared[int(np.nanargmax(means))]
        out["quality"] = {}
        for label, sel in (("flagged", flag), ("not_flagged", ~flag)):
            ok = sel & np.isfinite(got) & A[:, best]
            out["quality"][label] = {
                "queries": int(ok.sum()),
                "routed_score": round(float(got[ok].mean()), 4) if ok.any() else None,
                "best_single_score": round(float(Y[ok, best].mean()), 4) if ok.any() else None,
            }
        out["quality"]["best_single"] = data.model_names[best]
    else:
        out["quality"] = f"not measurable: the dataset shares {len(cols)} model(s) with the bundle's pool"
    return out


SATURATED = 0.98


def saturation(router: Router, decisions) -> dict:
    """Candidates with mu_tilde >= 0.98 although the model's global mean is below that (issue 21 §4: a query the
    data cannot speak for must not get a near-certain score), over all and over out-of-coverage queries."""
    g = dict(zip(router.names, router.global_means()))
    bad = [[c.name for c in d.candidates if c.mu_tilde >= SATURATED and g[c.name] < SATURATED] for d in decisions]
    flagged = [b for b, d in zip(bad, decisions) if d.coverage and d.coverage["out_of_coverage"]]
    return {
        "threshold": SATURATED,
        "queries_with_one": sum(1 for b in bad if b),
        "candidates": sum(len(b) for b in bad),
        "out_of_coverage_queries_with_one": sum(1 for b in flagged if b),
        "max_mu_tilde": round(max((c.mu_tilde for d in decisions for c in d.candidates), default=0.0), 4),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("sets", nargs="+", metavar="NAME=DIR")
    ap.add_argument("--limit", type=int, default=None, help="at most this many queries per dataset")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/coverage.json"))
    a = ap.parse_args(argv)
    router = Router.load(a.bundle)
    res = {
        "bundle": str(a.bundle),
        "threshold": router.coverage_threshold,
        "threshold_rule": (c.to_dict() if (c := router.bundle.manifest.coverage) else None),
        "sets": {},
    }
    for spec in a.sets:
        name, _, d = spec.partition("=")
        res["sets"][name] = measure(router, Path(d), a.limit)
        print(name, json.dumps(res["sets"][name]))
    atomic_write_text(a.out, json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
