"""Where `train` stretches the memory's retrieval space: the paired test of `export.train.memory.select_settings` on
each data set's validation split, with its image features and with the text-only twin's (issue 21).

The memory's choice does not depend on the training seed, so this says, without training, which grid cells a
stretched space changes (elsewhere the run is the one before to the digit).

    python benchmarks/memory_space_gate.py blindtest=../shared/data/blindtest vqarad=../shared/data/vqarad ...
        [--out benchmarks/results/memory_space_gate.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lr_onnx.export.files import atomic_write_text
from lr_onnx.export.train.memory import select_settings
from lr_onnx.export.train.trainer import load_training_set


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cells", nargs="+", metavar="NAME=DATA_DIR")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/memory_space_gate.json"))
    a = ap.parse_args(argv)
    res = json.loads(a.out.read_text(encoding="utf-8")) if a.out.is_file() else {}
    for spec in a.cells:
        name, _, data_dir = spec.partition("=")
        for text_only in (False, True):
            P = load_training_set(data_dir, text_only=text_only, progress=False)
            if text_only and not any(P.data.images):
                continue  # no images: the router reads the question alone already
            st, size, align, trials = select_settings(P)
            (test,) = [t["aligned_against_pca"] for t in trials if "aligned_against_pca" in t]
            key = f"{name}/text" if text_only else name
            res[key] = {
                "kept": align,
                "best_stretch": test["align"],
                "z": test["z"],
                "z_needed": test["z_needed"],
                "settings": st.to_dict(),
                "size": size,
            }
            atomic_write_text(a.out, json.dumps(res, indent=1) + "\n")
            print(f"{key:24s} kept {align:g}: best stretch {test['align']:g}, z {test['z']:+.2f}", flush=True)


if __name__ == "__main__":
    main()
