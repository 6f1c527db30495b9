"""A copy of a real set with another grouped split: how much of a result is the one official split's luck?

`dynamath`'s README warns that its split variance is large (98 test groups; the best model scores 0.62 on
train and 0.69 on test). This writes DATA's queries to OUT with the split redrawn by the README's own
procedure and another seed: groups (`meta.group`, e.g. the 10 variants of one seed question) never straddle
splits; per dataset label (sorted) its groups (sorted) are shuffled with one `random.Random(seed)` and the first
floor(0.2 n + 0.5) go to test, the next floor(0.1 n + 0.5) to val, the rest to train. With dynamath's seed
(20261202) it reproduces the official split row for row (checked). Images are linked, never copied; nothing is
written into DATA.

    python benchmarks/resplit.py ../shared/data/dynamath /tmp/dynamath_s1 --seed 1
    python benchmarks/newmodel.py /tmp/dynamath_s1 /tmp/nm_s1 --which strongest --sizes 48 --seeds 1
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
from collections import Counter
from pathlib import Path

FRACTIONS = {"test": 0.2, "val": 0.1}  # of each label's groups; the rest is train


def grouped_split(records: list[dict], seed: int) -> dict[str, str]:
    """{group: split} by the procedure above; a group's label is that of its first record."""
    label_of: dict[str, str] = {}
    for r in records:
        label_of.setdefault(r["meta"]["group"], r["dataset"])
    by_label: dict[str, list[str]] = {}
    for g, lab in label_of.items():
        by_label.setdefault(lab, []).append(g)
    rng, out = random.Random(seed), {}
    for lab in sorted(by_label):
        groups = sorted(by_label[lab])
        rng.shuffle(groups)
        n_test = math.floor(FRACTIONS["test"] * len(groups) + 0.5)
        n_val = math.floor(FRACTIONS["val"] * len(groups) + 0.5)
        for i, g in enumerate(groups):
            out[g] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def resplit(data: Path, out: Path, seed: int) -> Counter:
    """Write OUT (which must not exist): DATA's models.json, its queries with the new split, its images linked."""
    records = [json.loads(ln) for ln in (data / "queries.jsonl").read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not all(isinstance(r.get("meta"), dict) and "group" in r["meta"] for r in records):
        raise SystemExit(f"{data}: every query needs meta.group (the unit that must not straddle splits)")
    split = grouped_split(records, seed)
    out.mkdir(parents=True)
    shutil.copyfile(data / "models.json", out / "models.json")
    if (data / "images").is_dir():
        (out / "images").symlink_to((data / "images").resolve())
    lines = [json.dumps({**r, "split": split[r["meta"]["group"]]}) for r in records]
    (out / "queries.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Counter(split[r["meta"]["group"]] for r in records)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, required=True)
    a = ap.parse_args(argv)
    if a.out.exists():
        raise SystemExit(f"{a.out}: already exists")
    counts = resplit(a.data, a.out, a.seed)
    print(f"wrote {a.out}: " + ", ".join(f"{s} {counts[s]}" for s in ("train", "val", "test")))


if __name__ == "__main__":
    main()
