"""The feedback benchmark's routers: history and ceiling datasets, trained runs and exported bundles (issue 26).

    python benchmarks/feedback_setup.py --work DIR [--shared ../shared/data]

For each scenario of `benchmarks/feedback.py` it writes, under DIR (never into a dataset folder):
- `data/<name>`: a derived dataset (a `queries.jsonl` with its own split column, `models.json`, and a link to the
  source's images);
- `runs/<name>`: a router trained on it (the default training configuration and seed);
- `bundles/<name>`: its bundle (fp32).
Everything already there is reused, so a rerun only does what is missing; the grid's runs (`--grid`, trained with
the same configuration and seed) stand in for the history routers of blindtest and the merged set when present.
From scratch: about an hour on 2 cores (seven trainings, nine exports).

The stream of a scenario is its test split in a seeded random order (`stream_ids`); the ceiling router is trained
on the history plus the stream's first half with every model's outcome (full information): the queries a refresh
has seen before the measured second half begins. The measured half itself is never trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

STREAM_SEED = 7
SHIFT_SEED = 11
SCENARIOS = ("blindtest", "merged", "shift", "new_model")
NEW_MODEL = "claude-3.5-sonnet"  # the strongest model of blindtest (newmodel_real.json)


def _records(src: Path) -> list[dict]:
    with open(src / "queries.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _subject(rec: dict) -> str:
    return str((rec.get("dataset") or "").split("/", 1)[-1])


def stream_ids(records: list[dict], *, held: set[str] | None = None, seed: int = STREAM_SEED) -> list[str]:
    """The stream: the test split (or, for the shift scenario, every row of the held-out subjects), seeded order."""
    ids = [r["id"] for r in records if (r.get("split") == "test" if held is None else _subject(r) in held)]
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]


def held_subjects(records: list[dict]) -> set[str]:
    """Half of dynamath's subjects (seeded): the shift scenario's stream."""
    subjects = sorted({_subject(r) for r in records})
    pick = np.random.default_rng(SHIFT_SEED).permutation(len(subjects))[: len(subjects) // 2]
    return {subjects[i] for i in pick}


def write_derived(src: Path, out: Path, records: list[dict], drop: str | None = None) -> None:
    """A dataset folder beside the others: the given records, the source's models.json, its images linked; `drop`
    removes one model everywhere (the new-model scenario's history)."""
    if (out / "queries.jsonl").is_file():
        return
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    models = json.loads((src / "models.json").read_text(encoding="utf-8"))
    if drop is not None:
        models = [m for m in models if (m["name"] if isinstance(m, dict) else m) != drop]
        records = [dict(r, outcomes={k: v for k, v in r["outcomes"].items() if k != drop}) for r in records]
    (tmp / "models.json").write_text(json.dumps(models, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(tmp / "queries.jsonl", "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.symlink((src / "images").resolve(), tmp / "images")
    os.replace(tmp, out)


def merged_source(shared: Path, grid: Path | None, work: Path) -> Path:
    """blindtest + dynamath merged (`lr-onnx data merge`): the grid's copy when there is one, else made in `work`."""
    if grid is not None and (grid / "data" / "merge_blindtest_dynamath" / "queries.jsonl").is_file():
        return grid / "data" / "merge_blindtest_dynamath"
    out = work / "data" / "merged_source"
    if not (out / "queries.jsonl").is_file():
        from lr_onnx.export.data.merge import merge_datasets

        merge_datasets(out, [shared / "blindtest", shared / "dynamath"])
    return out


def plan(shared: Path, merged: Path) -> dict:
    """Per scenario: its source dataset, the history and ceiling datasets (records; None = the source as it is),
    the stream ids."""
    out = {}
    bt, dyn = shared / "blindtest", shared / "dynamath"
    for name, src in (("blindtest", bt), ("merged", merged)):
        recs = _records(src)
        stream = stream_ids(recs)
        first = set(stream[: len(stream) // 2])
        out[name] = {
            "src": src,
            "stream": stream,
            "history": None,
            "ceiling": [dict(r, split="train") if r["id"] in first else r for r in recs],
        }
    recs = _records(dyn)
    held = held_subjects(recs)
    stream = stream_ids(recs, held=held)
    first = set(stream[: len(stream) // 2])
    hist = [r for r in recs if _subject(r) not in held]
    out["shift"] = {
        "src": dyn,
        "stream": stream,
        "held_subjects": sorted(held),
        "history": hist,
        "ceiling": hist + [dict(r, split="train") for r in recs if r["id"] in first],
    }
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument(
        "--grid",
        type=Path,
        default=Path("/tmp/grid"),
        help="Folder of the grid's runs (reused as history routers where they exist).",
    )
    a = ap.parse_args(argv)
    from lr_onnx.export.bundle.assemble import export_bundle
    from lr_onnx.export.train.trainer import TrainConfig, train

    for sub in ("data", "runs", "bundles"):
        (a.work / sub).mkdir(parents=True, exist_ok=True)
    p = plan(a.shared, merged_source(a.shared, a.grid, a.work))
    write_derived(
        a.shared / "blindtest", a.work / "data" / "new_model_history", _records(a.shared / "blindtest"), drop=NEW_MODEL
    )
    # (run name, dataset folder, a run trained the same way elsewhere: the grid's, reused when it is there)
    jobs = [
        ("blindtest_history", p["blindtest"]["src"], a.grid / "blindtest" / "seed0"),
        ("merged_history", p["merged"]["src"], a.grid / "real_merged" / "seed0"),
        (
            "new_model_history",
            a.work / "data" / "new_model_history",
            Path("/tmp/nm_blindtest") / f"without_{NEW_MODEL}",
        ),
    ]
    jobs = [(n, d, r if (r / "weights.safetensors").is_file() else None) for n, d, r in jobs]
    for name, s in p.items():
        if s["history"] is not None:
            write_derived(s["src"], a.work / "data" / f"{name}_history", s["history"])
            jobs.append((f"{name}_history", a.work / "data" / f"{name}_history", None))
        write_derived(s["src"], a.work / "data" / f"{name}_ceiling", s["ceiling"])
        jobs.append((f"{name}_ceiling", a.work / "data" / f"{name}_ceiling", None))
    for name, data, run in jobs:
        run_dir = run or a.work / "runs" / name
        if not (run_dir / "weights.safetensors").is_file():
            print(f"training {name}", flush=True)
            train(data, run_dir, TrainConfig(), progress=False)
        bundle = a.work / "bundles" / name
        if not (bundle / "manifest.json").is_file():
            print(f"exporting {name}", flush=True)
            export_bundle(run_dir, bundle, progress=False)
    meta = {
        n: {
            "stream": s["stream"],
            **({"held_subjects": s["held_subjects"]} if "held_subjects" in s else {}),
            "source": str(s["src"]),
        }
        for n, s in p.items()
    }
    (a.work / "streams.json").write_text(json.dumps(meta))
    print("ready", flush=True)


if __name__ == "__main__":
    main()
