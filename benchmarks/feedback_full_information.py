"""Is an in-domain refresh's loss the bandit's missing outcomes? The `blindtest` stream replayed as in
`feedback.py`, without exploration, once with bandit feedback (the chosen model's outcome) and once with every
candidate's outcome, on several stream orders.

    python benchmarks/feedback_full_information.py --work DIR [--orders 7 8 9 10 11]

DIR is `feedback.py`'s work folder (its history bundle is reused); writes
`benchmarks/results/feedback_full_information.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import feedback  # noqa: E402
import feedback_setup  # noqa: E402
from lr_onnx.runtime.files import atomic_write_text  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--orders", nargs="*", type=int, default=[7, 8, 9, 10, 11])
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "feedback_full_information.json"
    )
    a = ap.parse_args(argv)
    meta = json.loads((a.work / "streams.json").read_text())["blindtest"]
    src, history = Path(meta["source"]), a.work / "bundles" / "blindtest_history"
    records = feedback_setup._records(src)
    rows = []
    for seed in a.orders:
        q, Y, C, A, names, _ = feedback.stream_table(src, feedback_setup.stream_ids(records, seed=seed))
        row: dict = {"stream_seed": seed}
        for arm, learn, full in (("frozen", False, False), ("bandit", True, False), ("full_information", True, True)):
            how = {"explore": None, "lam": 0.0, "every": 200, "learn": learn, "reveal_all": full}
            out, _ = feedback.replay(history, q, Y, C, A, names, **how, work=a.work / "replay" / f"full_{seed}_{arm}")
            row[arm] = out["score_second_half"]
        print(row, flush=True)
        rows.append(row)
    mean = {
        arm: round(sum(r[arm] - r["frozen"] for r in rows) / len(rows), 6) for arm in ("bandit", "full_information")
    }
    res = {
        "stream": "blindtest test split",
        "orders": rows,
        "mean_minus_frozen": mean,
        "command": "python benchmarks/feedback_full_information.py --work DIR",
    }
    atomic_write_text(a.out, json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
