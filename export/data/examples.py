"""Write the example images shipped in assets/examples (real pictures, with their licences).

python -m lr_onnx.export.data.examples assets/examples
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

LICENSES = """# Example images

| file | what | source and licence |
|---|---|---|
| page.png | a scanned page of printed text | `skimage.data.page()`, scikit-image sample data; source and licence in scikit-image's `skimage/data/README.txt` (scikit-image is BSD-3-Clause) |
| text.png | a picture of printed text | `skimage.data.text()`, scikit-image sample data (same README) |
| coffee.jpg | a photo of a cup of coffee | `skimage.data.coffee()`, photograph by Rachel Michetti, scikit-image sample data (same README) |
| chart.png | a bar chart of real share prices | rendered by lr-onnx from matplotlib's `Stocks.csv` sample data (MIT, this project) |
| receipt.jpg | a shop receipt | rendered by lr-onnx (MIT, this project) |
| plot.png | the graph of a function on a grid (a math-diagram question, as in DynaMath) | rendered by lr-onnx with matplotlib (MIT, this project) |
| lines.png | two line plots that may cross (a low-level perception question, as in BlindTest) | rendered by lr-onnx with matplotlib (MIT, this project) |
"""


def write_examples(out: Path) -> None:
    import skimage.data

    from .demo.render import make_chart, make_document

    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(skimage.data.page()).save(out / "page.png")
    Image.fromarray(skimage.data.text()).save(out / "text.png")
    Image.fromarray(skimage.data.coffee()).save(out / "coffee.jpg", quality=85)
    seed = 0
    while True:  # the first seeded bar chart and receipt of the demo generators
        s = make_chart(np.random.default_rng([seed, 99]))
        if s.subtype.startswith("bar") and s.d_text < 0.4:
            s.image.save(out / "chart.png")
            break
        seed += 1
    seed = 0
    while True:
        s = make_document(np.random.default_rng([seed, 98]))
        if s.subtype.startswith("receipt") and s.d_text < 0.4:
            s.image.save(out / "receipt.jpg", quality=85)
            break
        seed += 1
    _plot(out / "plot.png")
    _lines(out / "lines.png")
    (out / "LICENSES.md").write_text(LICENSES, encoding="utf-8")


def _plot(path: Path) -> None:
    """y = 2 sin(3x) on a grid: what is its period? (the default bundle's training data covers such diagrams)"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.linspace(-np.pi, np.pi, 600)
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    ax.plot(x, 2 * np.sin(3 * x), color="tab:blue")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.grid(True, alpha=0.4)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _lines(path: Path) -> None:
    """Two piecewise-linear plots that cross twice: how many times do they intersect?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.12, 5.12), dpi=100)
    ax.plot([0, 1, 2], [1, 4, 1], color="tab:red", linewidth=3)
    ax.plot([0, 1, 2], [3, 1, 3], color="tab:blue", linewidth=3)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    write_examples(Path(sys.argv[1] if len(sys.argv) > 1 else "assets/examples"))
