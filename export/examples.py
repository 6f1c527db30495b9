"""Write the example images shipped in assets/examples (real pictures, with their licences).

    python -m lr_onnx.export.examples assets/examples
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
    (out / "LICENSES.md").write_text(LICENSES, encoding="utf-8")


if __name__ == "__main__":
    write_examples(Path(sys.argv[1] if len(sys.argv) > 1 else "assets/examples"))
