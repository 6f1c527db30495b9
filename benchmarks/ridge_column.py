"""Experiment (issue 21, not adopted): a cross-fitted ridge estimate as a fourth memory column of the network.

Issue 21 suggests giving the capability tokens other strong per-(query, model) signals the way the memory's are
given, for example an out-of-fold linear estimate (LinearMF wins some simulated cells). This script runs
`benchmarks/targets.py` with one change, made here and not in the product: every row's memory columns get a
fourth, the logit of a per-model ridge estimate on the retrieval vector and the side features (alpha chosen by
5-fold error on the training rows), cross-fitted over 5 folds, so no memory row sees a fit on its own outcome.
The network reads it through the memory's Linear(n, H) into each model token; the memory estimate, the blend
and everything else are unchanged.

    python benchmarks/ridge_column.py --grid OUT_DIR --cells dynamath,vqarad --results grid_ridge.json \\
        --ablation-seeds 0          (any `benchmarks/targets.py` arguments)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import targets  # noqa: E402  (benchmarks/targets.py)
from memory_variants import ridge, ridge_predict  # noqa: E402

from lr_onnx.export.train import trainer  # noqa: E402
from lr_onnx.runtime.features import HAS_IMAGE_COL  # noqa: E402
from lr_onnx.runtime.memory import COLUMNS, logit  # noqa: E402

FOLDS = 5
ALPHAS = (0.01, 0.1, 1.0, 10.0)
SIDE_SCALE = 0.1  # standardised side features, scaled to sit beside a unit retrieval vector


def ridge_column(P, mem) -> np.ndarray:
    """`[N, K]` logit of each model's ridge estimate; memory rows out of fold."""
    rows = mem.rows
    side = P.q[:, HAS_IMAGE_COL:]
    mu, sd = side[rows].mean(0), side[rows].std(0) + 1e-6
    X = np.concatenate([mem.embed(P.q), (side - mu) / sd * SIDE_SCALE], 1)
    Y, A, Xr = np.nan_to_num(P.data.Y[rows]), P.data.A[rows], X[rows]
    fold = np.random.default_rng(0).integers(0, FOLDS, len(rows))

    def error(alpha):
        return sum(
            float(
                np.sum(
                    A[fold == i]
                    * (
                        ridge_predict(ridge(Xr[fold != i], Y[fold != i], A[fold != i], alpha), Xr[fold == i])
                        - Y[fold == i]
                    )
                    ** 2
                )
            )
            for i in range(FOLDS)
        )

    alpha = min(ALPHAS, key=error)
    out = ridge_predict(ridge(Xr, Y, A, alpha), X)
    for i in range(FOLDS):
        out[rows[fold == i]] = ridge_predict(ridge(Xr[fold != i], Y[fold != i], A[fold != i], alpha), Xr[fold == i])
    return logit(np.clip(out, 0.01, 0.99)).astype(np.float32)


_attach = trainer.TrainingSet.attach_memory


def attach_with_ridge(self, settings, size: float = 1.0, *rest, **named) -> None:
    _attach(self, settings, size, *rest, **named)
    self.mem_cols = np.concatenate([self.mem_cols, ridge_column(self, self.memory)[..., None]], axis=-1)


trainer.TrainingSet.attach_memory = attach_with_ridge
trainer.COLUMNS = COLUMNS + 1  # the router config's memory width

if __name__ == "__main__":
    targets.main()
