"""Demo benchmark generators, continued: photos, spatial layouts of shapes and text-only questions
(`render.py` holds the shared pieces, documents, charts, tables and math)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .render import GENERIC_SHOW, GENERIC_IMAGE_Q, Sample, font, degrade, uniform01


# ----------------------------------------------------------------------------- photos

PHOTOS = [  # (source, loader name, answer)
    ("skimage", "astronaut", "an astronaut"),
    ("skimage", "coffee", "a cup of coffee"),
    ("skimage", "chelsea", "a cat"),
    ("skimage", "rocket", "a rocket"),
    ("skimage", "hubble_deep_field", "galaxies in deep space"),
    ("skimage", "immunohistochemistry", "stained tissue under a microscope"),
    ("skimage", "retina", "a retina"),
    ("skimage", "camera", "a man with a camera"),
    ("skimage", "moon", "the surface of the moon"),
    ("skimage", "coins", "coins"),
    ("skimage", "clock", "a clock"),
    ("skimage", "colorwheel", "a color wheel"),
    ("sklearn", "china.jpg", "a temple"),
    ("sklearn", "flower.jpg", "a flower"),
    ("matplotlib", "grace_hopper.jpg", "a woman in uniform"),
]


@lru_cache(maxsize=None)
def photo(j: int) -> Image.Image:
    """The j-th real sample photo, as RGB, loaded from the installed package's own data."""
    src, name, _ = PHOTOS[j]
    if src == "skimage":
        import skimage.data

        arr = getattr(skimage.data, name)()
    elif src == "sklearn":
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(name)
    else:
        import matplotlib.cbook as cbook

        with Image.open(cbook.get_sample_data(name, asfileobj=False)) as im:
            return im.convert("RGB")
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        arr = (255 * (arr.astype(float) - arr.min()) / max(float(np.ptp(arr)), 1e-9)).astype(np.uint8)
    img = Image.fromarray(arr).convert("RGB")
    img.thumbnail((900, 900), Image.BILINEAR)  # crops are shown at <= 448 px anyway
    return img


def make_photo(rng) -> Sample:
    j = int(rng.integers(len(PHOTOS)))
    base = photo(j)
    d_text, d_clutter = uniform01(rng), uniform01(rng)
    W, H = base.size
    frac = 0.95 - 0.6 * d_clutter  # tighter crops show less context
    cw, ch = int(W * frac), int(H * frac)
    x, y = int(rng.integers(0, W - cw + 1)), int(rng.integers(0, H - ch + 1))
    img = base.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    scale = 448 / max(img.size)
    img = img.resize((max(16, int(img.size[0] * scale)), max(16, int(img.size[1] * scale))), Image.BILINEAR)
    arr = np.asarray(img).astype(np.float32)
    arr = arr * float(rng.uniform(0.75, 1.15)) + float(rng.uniform(-20, 20))
    if d_text > 0.5:
        arr = arr + rng.normal(0, 25 * (d_text - 0.5), size=arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    img, attrs = degrade(img, rng, d_text)
    attrs.update({"source": PHOTOS[j][1], "crop": round(frac, 2)})
    if rng.random() < 0.6:
        q, g = GENERIC_SHOW, True
    else:
        q, g = "What is the main subject of this photo?", False
    return Sample(img, q, PHOTOS[j][2], g, PHOTOS[j][1], d_text, d_clutter, attrs, fmt="jpg")


# ----------------------------------------------------------------------------- spatial layouts

COLORS = {
    "red": (220, 40, 40),
    "blue": (40, 80, 220),
    "green": (40, 170, 60),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
SHAPES = ["circle", "square", "triangle"]


def _shape(dr, kind, cx, cy, r, color):
    if kind == "circle":
        dr.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif kind == "square":
        dr.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
    else:
        dr.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)


def make_spatial(rng) -> Sample:
    d_text, d_clutter = uniform01(rng), uniform01(rng)
    n = int(2 + round(10 * d_clutter))
    r = int(round(34 - 24 * d_text))  # small shapes are the "small print" of this family
    W, H = 400, 300
    img = Image.new("RGB", (W, H), (248, 248, 248))
    dr = ImageDraw.Draw(img)
    objs = []
    for _ in range(n):
        for _try in range(20):
            cx, cy = float(rng.uniform(r + 4, W - r - 4)), float(rng.uniform(r + 4, H - r - 4))
            if all(abs(cx - o[2]) > 2 * r or abs(cy - o[3]) > 2 * r for o in objs):
                break
        objs.append((str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)), cx, cy))
    for color, kind, cx, cy in objs:
        _shape(dr, kind, cx, cy, r, COLORS[color])
    kind = str(rng.choice(["count", "leftright", "top"]))
    if kind == "count":
        target = str(rng.choice(SHAPES))
        a = str(sum(1 for o in objs if o[1] == target))
        q_specific = f"How many {target}s are in the image?"
        prompt = f"How many {target}s?"
    elif kind == "leftright":
        o1, o2 = objs[0], objs[-1] if len(objs) > 1 else objs[0]
        a = "yes" if o1[2] < o2[2] else "no"
        q_specific = f"Is the {o1[0]} {o1[1]} to the left of the {o2[0]} {o2[1]}?"
        prompt = f"{o1[0]} {o1[1]} left of {o2[0]} {o2[1]}?"
    else:
        o = min(objs, key=lambda t: t[3])
        a = f"{o[0]} {o[1]}"
        q_specific = "Which shape is closest to the top of the image?"
        prompt = "Which shape is at the top?"
    g = rng.random() < 0.5
    if g:
        dr.text((6, H - 20), prompt, fill=(0, 0, 0), font=font(12))
        q = GENERIC_IMAGE_Q
    else:
        q = q_specific
    if d_clutter > 0.6:  # background clutter
        for _ in range(int(10 * d_clutter)):
            x0, y0 = float(rng.uniform(0, W)), float(rng.uniform(0, H))
            dr.line([x0, y0, x0 + float(rng.uniform(-40, 40)), y0 + float(rng.uniform(-40, 40))], fill=(200, 200, 200))
    img, attrs = degrade(img, rng, d_text)
    attrs.update({"shapes": n, "shape_px": 2 * r})
    return Sample(img, q, a, g, kind, d_text, d_clutter, attrs)


# ----------------------------------------------------------------------------- text-only


def make_text(rng) -> Sample:
    d = uniform01(rng)
    kind = str(rng.choice(["arith", "compare", "letters", "units"]))
    if kind == "arith":
        digits = 1 + int(round(3 * d))
        a, b = int(rng.integers(10 ** (digits - 1), 10**digits)), int(rng.integers(2, 10 ** max(1, digits)))
        op = str(rng.choice(["+", "-", "*"]))
        val = a + b if op == "+" else a - b if op == "-" else a * b
        q, ans = f"What is {a} {op} {b}?", str(val)
    elif kind == "compare":
        places = 1 + int(round(3 * d))
        x, y = round(float(rng.uniform(0, 1)), places), round(float(rng.uniform(0, 1)), places)
        q, ans = f"Which number is larger, {x} or {y}?", str(max(x, y))
    elif kind == "letters":
        n = 4 + int(round(8 * d))
        word = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=n))
        letter = word[int(rng.integers(n))]
        q, ans = f"How many times does the letter '{letter}' appear in '{word}'?", str(word.count(letter))
    else:
        km = round(float(rng.uniform(1, 10 ** (1 + 2 * d))), 1 + int(round(2 * d)))
        q, ans = f"How many meters are in {km} kilometers?", f"{km * 1000:g}"
    return Sample(None, q, ans, False, kind, 0.0, d, {})
