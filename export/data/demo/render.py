"""Image and question generators for the demo benchmark, one function per task family.

Every generator takes a numpy Generator and returns a `Sample`: the picture (or
None for text-only), the question, the correct answer read off the rendering, and
the visual difficulty that produced it. Difficulty lives only in pixels (font
size, blur, resolution, clutter, number of series) and never in the question text,
so a router has to look at the image to see it.

    d_text     0..1  how hard the small print is to read (font size, blur, low resolution)
    d_clutter  0..1  how busy the picture is (items, rows, series, shapes, distractors)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

GENERIC_VALUE = "What is the value shown?"
GENERIC_SHOW = "What does this image show?"
GENERIC_IMAGE_Q = "Answer the question in the image."
GENERIC_ANSWER = "What is the answer?"


@dataclass
class Sample:
    image: Image.Image | None
    question: str
    answer: str
    generic: bool
    subtype: str
    d_text: float
    d_clutter: float
    attrs: dict = field(default_factory=dict)
    fmt: str = "png"


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, int(size)))


def canvas(W: int, H: int, font_px: int) -> tuple[Image.Image, ImageDraw.ImageDraw, ImageFont.FreeTypeFont]:
    """A white W x H picture, its drawing context and the font of the given size."""
    img = Image.new("RGB", (W, H), (255, 255, 255))
    return img, ImageDraw.Draw(img), font(font_px)


def degrade(img: Image.Image, rng, d_text: float) -> tuple[Image.Image, dict]:
    """Blur and/or down-then-up sampling, scaled by how hard the print should be to read."""
    attrs = {}
    if d_text > 0.45 and rng.random() < 0.6:
        r = round(float(0.4 + 1.2 * (d_text - 0.45) / 0.55 * rng.random()), 2)
        img = img.filter(ImageFilter.GaussianBlur(r))
        attrs["blur"] = r
    if d_text > 0.6 and rng.random() < 0.5:
        f = float(0.45 + 0.3 * rng.random())
        w, h = img.size
        img = img.resize((max(16, int(w * f)), max(16, int(h * f))), Image.BILINEAR).resize((w, h), Image.BILINEAR)
        attrs["downscale"] = round(f, 2)
    return img, attrs


def uniform01(rng) -> float:
    return float(rng.random())


# ----------------------------------------------------------------------------- documents

STORES = [
    "CORNER MARKET",
    "BLUE BAKERY",
    "CITY PHARMACY",
    "GREEN GROCER",
    "NORTH CAFE",
    "HARBOR HARDWARE",
    "SUNRISE DELI",
    "PINE BOOKS",
    "RIVER NOODLES",
    "MAPLE FOODS",
]
ITEMS = [
    "milk",
    "bread",
    "eggs",
    "apples",
    "coffee",
    "tea",
    "rice",
    "pasta",
    "cheese",
    "butter",
    "tomatoes",
    "soap",
    "batteries",
    "notebook",
    "pens",
    "juice",
    "yogurt",
    "bananas",
    "onions",
    "flour",
    "sugar",
    "honey",
    "lamp",
    "tape",
    "gloves",
    "cereal",
    "olive oil",
    "chocolate",
    "water",
    "napkins",
]
WORDS = (
    "the of and to in for on with as by at from that this report data model system value results table "
    "figure section analysis method quality cost router image question answer budget summary total review "
    "annual meeting policy notice invoice project schedule account balance payment service order"
).split()


def make_document(rng) -> Sample:
    kind = rng.choice(["receipt", "receipt", "page", "form"])
    d_text, d_clutter = uniform01(rng), uniform01(rng)
    fs = int(round(22 - 14 * d_text))  # 22 px (easy) .. 8 px (hard)
    if kind == "receipt":
        n_items = int(3 + round(9 * d_clutter))
        items = list(rng.choice(ITEMS, size=n_items, replace=False))
        prices = [round(float(rng.uniform(0.5, 40)), 2) for _ in items]
        total = round(sum(prices), 2)
        store = str(rng.choice(STORES))
        lines = [store, f"{int(rng.integers(1, 28)):02d}/{int(rng.integers(1, 13)):02d}/2026", "-" * 24]
        lines += [f"{it:<16s}{p:>8.2f}" for it, p in zip(items, prices)]
        lines += ["-" * 24, f"{'TOTAL':<16s}{total:>8.2f}"]
        r = rng.random()
        if r < 0.45:
            q, a, g, task = GENERIC_VALUE, f"{total:.2f}", True, "total"
        elif r < 0.7:
            q, a, g, task = "What is the total amount on this receipt?", f"{total:.2f}", False, "total"
        elif r < 0.9:
            j = int(rng.integers(n_items))
            q, a, g, task = f"How much does the {items[j]} cost?", f"{prices[j]:.2f}", False, "item"
        else:
            q, a, g, task = "What is the name of the store?", store, False, "store"
        kind = f"receipt-{task}"
        bg = (250, 248, 240)
    elif kind == "page":
        title_words = list(rng.choice(WORDS[12:], size=3, replace=False))
        title = " ".join(w.capitalize() for w in title_words)
        n_lines = int(6 + round(14 * d_clutter))
        body = [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 11)))) for _ in range(n_lines)]
        lines = [title.upper(), ""] + body
        if rng.random() < 0.5:
            q, a, g = GENERIC_IMAGE_Q, title, True
            lines = ["Q: What is the title of this page?", ""] + lines
        else:
            q, a, g = "What is the title of this document?", title, False
        bg = (255, 255, 255)
    else:  # form with a field to read
        fields = ["Name", "Account", "Amount", "Date", "Reference", "Phone", "City", "Code"]
        n = int(3 + round(5 * d_clutter))
        vals = {f: str(int(rng.integers(1000, 99999))) for f in fields[:n]}
        lines = ["APPLICATION FORM", ""] + [f"{f}: {v}" for f, v in vals.items()]
        fld = str(rng.choice(list(vals)))
        if fld == "Amount" or rng.random() < 0.4:
            fld = "Amount" if "Amount" in vals else fld
            q, a, g, kind = GENERIC_VALUE, vals[fld], True, "form-marked"
            lines[2 + list(vals).index(fld)] += "  <--"
        else:
            q, a, g, kind = f"What is the {fld.lower()} on this form?", vals[fld], False, "form-field"
        bg = (245, 245, 250)
    f = font(fs)
    lh = int(fs * 1.35)
    width = int(min(640, max(260, 0.62 * fs * max(len(s) for s in lines) + 40)))
    height = int(min(720, lh * len(lines) + 40))
    img = Image.new("RGB", (width, height), bg)
    dr = ImageDraw.Draw(img)
    for j, s in enumerate(lines):
        dr.text((20, 20 + j * lh), s, fill=(20, 20, 20), font=f)
    if rng.random() < 0.5:
        img = img.rotate(float(rng.uniform(-3, 3)), resample=Image.BILINEAR, expand=False, fillcolor=bg)
    img, attrs = degrade(img, rng, d_text)
    attrs.update({"font_px": fs, "lines": len(lines)})
    return Sample(img, q, a, g, kind, d_text, d_clutter, attrs, fmt="jpg")


# ----------------------------------------------------------------------------- charts

# matplotlib's tab10 and two more, as hex
_PALETTE = [
    tuple(int(h[i : i + 2], 16) for i in (0, 2, 4))
    for h in "1f77b4 ff7f0e 2ca02c d62728 9467bd 8c564b e377c2 7f7f7f bcbd22 17becf 5a5ac8 c85a5a".split()
]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@lru_cache(maxsize=1)
def stock_table() -> tuple[list[str], list[str], np.ndarray]:
    """Monthly closing prices of real tickers from matplotlib's sample data (Stocks.csv)."""
    import matplotlib.cbook as cbook

    path = cbook.get_sample_data("Stocks.csv", asfileobj=False)
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    rows = [ln.split(",") for ln in text.splitlines() if ln and not ln.startswith("#")]
    header, body = rows[0], rows[1:]
    dates = [r[0] for r in body]
    vals = np.array([[float(x) if x else np.nan for x in r[1:]] for r in body])
    keep = np.isfinite(vals).sum(axis=1) >= 5  # the file interleaves empty rows
    return header[1:], [d for d, k in zip(dates, keep) if k], vals[keep]


def drawn(rng, kinds: list[str], fs_easy: int, fs_span: int, W: int, H: int) -> tuple:
    """A drawn family's start, in this RNG order: its kind, its two difficulties, the font size the text difficulty
    gives (fs_easy px at 0, fs_easy - fs_span at 1) and a blank W x H canvas with that font."""
    kind = str(rng.choice(kinds))
    d_text, d_clutter = uniform01(rng), uniform01(rng)
    fs = int(round(fs_easy - fs_span * d_text))
    return (kind, d_text, d_clutter, fs, *canvas(W, H, fs))


def make_chart(rng) -> Sample:
    W, H = 480, 360
    kind, d_text, d_clutter, fs, img, dr, f = drawn(rng, ["bar", "line", "pie"], 16, 9, W, H)
    tickers, dates, table = stock_table()
    if kind == "bar":
        n = int(3 + round(9 * d_clutter))
        year_rows = [j for j in range(len(dates)) if dates[j].endswith("-01-01")]
        row = int(rng.choice(year_rows))
        avail = [t for t, v in zip(tickers, table[row]) if np.isfinite(v)]
        names = list(rng.choice(avail, size=min(n, len(avail)), replace=False))
        names += [f"X{j}" for j in range(n - len(names))]
        lookup = dict(zip(tickers, table[row]))
        vals = [round(float(lookup.get(t, rng.uniform(5, 90))), 1) for t in names]
        top = max(vals) * 1.1
        x0, y0, x1, y1 = 50, 30, W - 15, H - 40
        bw = (x1 - x0) / n
        for j, (t, v) in enumerate(zip(names, vals)):
            h = (y1 - y0) * v / top
            dr.rectangle([x0 + j * bw + 3, y1 - h, x0 + (j + 1) * bw - 3, y1], fill=_PALETTE[j % 12])
            dr.text((x0 + j * bw + 3, y1 + 4), t[:5], fill=(0, 0, 0), font=f)
            dr.text((x0 + j * bw + 3, y1 - h - fs - 2), f"{v:g}", fill=(0, 0, 0), font=f)
        dr.line([x0, y1, x1, y1], fill=(0, 0, 0))
        dr.text((x0, 5), f"Share price, {dates[row][:4]}", fill=(0, 0, 0), font=font(fs + 2))
        jmax = int(np.argmax(vals))
        r = rng.random()
        if r < 0.45:
            q, a, g, kind = GENERIC_VALUE, f"{vals[jmax]:g}", True, "bar-max"
        elif r < 0.75:
            q, a, g, kind = "Which category has the highest bar?", names[jmax], False, "bar-argmax"
        else:
            j = int(rng.integers(n))
            q, a, g, kind = f"What is the value for {names[j]}?", f"{vals[j]:g}", False, "bar-lookup"
        series = n
    elif kind == "line":
        n_series = int(1 + round(4 * d_clutter))
        cols: list[int] = []
        while len(cols) < n_series:  # a 12-month window where enough tickers have prices
            start = int(rng.integers(0, len(dates) - 13))
            cols = [j for j in range(len(tickers)) if np.all(np.isfinite(table[start : start + 12, j]))]
        pick = list(rng.choice(cols, size=min(n_series, len(cols)), replace=False))
        data = table[start : start + 12, pick]
        lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
        x0, y0, x1, y1 = 50, 30, W - 15, H - 40
        for s in range(data.shape[1]):
            pts = [
                (x0 + (x1 - x0) * m / 11, y1 - (y1 - y0) * (data[m, s] - lo) / max(hi - lo, 1e-6)) for m in range(12)
            ]
            dr.line(pts, fill=_PALETTE[s], width=2)
            dr.text((x1 - 60, y0 + s * (fs + 2)), tickers[pick[s]], fill=_PALETTE[s], font=f)
        for m in range(0, 12, 1 if fs < 11 else 2):
            dr.text((x0 + (x1 - x0) * m / 11 - 8, y1 + 4), MONTHS[m], fill=(0, 0, 0), font=f)
        dr.line([x0, y1, x1, y1], fill=(0, 0, 0))
        dr.line([x0, y0, x0, y1], fill=(0, 0, 0))
        dr.text((5, y0), f"{hi:.0f}", fill=(0, 0, 0), font=f)
        dr.text((5, y1 - fs), f"{lo:.0f}", fill=(0, 0, 0), font=f)
        first = tickers[pick[0]]
        mbest = MONTHS[int(np.argmax(data[:, 0]))]
        r = rng.random()
        if r < 0.45:
            q, a, g, kind = GENERIC_VALUE, f"{hi:.0f}", True, "line-max"
        elif r < 0.8:
            q, a, g, kind = f"In which month is {first} highest?", mbest, False, "line-month"
        else:
            q, a, g, kind = "How many lines are in this chart?", str(data.shape[1]), False, "line-count"
        series = data.shape[1]
    else:
        n = int(3 + round(6 * d_clutter))
        raw = rng.dirichlet(np.ones(n) * 2.0)
        pct = np.round(raw * 100).astype(int)
        pct[-1] = 100 - pct[:-1].sum()
        labels = [
            str(x)
            for x in rng.choice(
                ["North", "South", "East", "West", "Online", "Retail", "Export", "Other", "Services", "Hardware"],
                size=n,
                replace=False,
            )
        ]
        cx, cy, rad = 170, 190, 140
        ang = -90.0
        for j in range(n):
            sweep = 360.0 * pct[j] / 100
            dr.pieslice([cx - rad, cy - rad, cx + rad, cy + rad], ang, ang + sweep, fill=_PALETTE[j % 12])
            ang += sweep
        for j in range(n):
            dr.rectangle([330, 30 + j * (fs + 6), 340, 40 + j * (fs + 6)], fill=_PALETTE[j % 12])
            dr.text((345, 28 + j * (fs + 6)), f"{labels[j]} {pct[j]}%", fill=(0, 0, 0), font=f)
        jmax = int(np.argmax(pct))
        r = rng.random()
        if r < 0.45:
            q, a, g, kind = GENERIC_VALUE, f"{pct[jmax]}%", True, "pie-max"
        else:
            q, a, g, kind = "Which segment is the largest in the pie chart?", labels[jmax], False, "pie-argmax"
        series = n
    if d_clutter > 0.5 and not kind.startswith("pie"):  # grid lines as clutter
        for yy in range(40, H - 40, 24):
            dr.line([50, yy, W - 15, yy], fill=(225, 225, 225))
    img, attrs = degrade(img, rng, d_text)
    attrs.update({"font_px": fs, "series": series})
    return Sample(img, q, a, g, kind, d_text, d_clutter, attrs)


# ----------------------------------------------------------------------------- tables

ROW_NAMES = ["Alpha", "Beta", "Gamma", "Delta", "Omega", "Sigma", "Kappa", "Theta", "Lambda", "Zeta", "Iota", "Rho"]
COL_NAMES = ["Q1", "Q2", "Q3", "Q4", "Total", "Units", "Price", "Score"]


def make_table(rng) -> Sample:
    d_text, d_clutter = uniform01(rng), uniform01(rng)
    fs = int(round(18 - 10 * d_text))
    nr = int(3 + round(9 * d_clutter))
    nc = int(3 + round(3 * d_clutter))
    rows = ROW_NAMES[:nr]
    cols = COL_NAMES[:nc]
    vals = rng.integers(10, 999, size=(nr, nc))
    cw, rh = int(fs * 4.2), int(fs * 1.7)
    W, H = cw * (nc + 1) + 20, rh * (nr + 1) + 20
    img, dr, f = canvas(W, H, fs)
    hi_r, hi_c = int(rng.integers(nr)), int(rng.integers(nc))
    for j in range(nr + 1):
        for c in range(nc + 1):
            x, y = 10 + c * cw, 10 + j * rh
            fill = (235, 235, 245) if j == 0 or c == 0 else (255, 255, 255)
            if j - 1 == hi_r and c - 1 == hi_c:
                fill = (255, 236, 140)
            dr.rectangle([x, y, x + cw, y + rh], outline=(120, 120, 120), fill=fill)
            txt = (
                ""
                if j == 0 and c == 0
                else cols[c - 1]
                if j == 0
                else rows[j - 1]
                if c == 0
                else str(vals[j - 1, c - 1])
            )
            dr.text((x + 4, y + (rh - fs) // 2), txt, fill=(0, 0, 0), font=f)
    r = rng.random()
    if r < 0.45:
        q, a, g, kind = GENERIC_VALUE, str(vals[hi_r, hi_c]), True, "highlighted"
    else:
        rr, cc = int(rng.integers(nr)), int(rng.integers(nc))
        q, a, g = f"What is the value in row {rows[rr]}, column {cols[cc]}?", str(vals[rr, cc]), False
        kind = "lookup-wide" if nc > 4 else "lookup"
    img, attrs = degrade(img, rng, d_text)
    attrs.update({"font_px": fs, "rows": nr, "cols": nc})
    return Sample(img, q, a, g, kind, d_text, d_clutter, attrs)


# ----------------------------------------------------------------------------- math / geometry


def make_math(rng) -> Sample:
    W, H = 420, 340
    kind, d_text, d_clutter, fs, img, dr, f = drawn(rng, ["triangle", "rectangle", "circle"], 20, 11, W, H)
    n_distract = int(round(8 * d_clutter))
    for _ in range(n_distract):  # construction lines and stray labels
        p = rng.uniform([0, 0, 0, 0], [W, H, W, H])
        dr.line(list(map(float, p)), fill=(170, 170, 170), width=1)
        dr.text(
            (float(rng.uniform(0, W - 30)), float(rng.uniform(0, H - 20))),
            str(int(rng.integers(1, 99))),
            fill=(140, 140, 140),
            font=f,
        )
    if kind == "triangle":
        a1, a2 = int(rng.integers(25, 80)), int(rng.integers(25, 80))
        a3 = 180 - a1 - a2
        pts = [(60, 280), (360, 280), (float(rng.uniform(120, 300)), 60)]
        dr.polygon(pts, outline=(0, 0, 0), width=2)
        dr.text((70, 250), f"{a1}°", fill=(0, 0, 160), font=f)
        dr.text((315, 250), f"{a2}°", fill=(0, 0, 160), font=f)
        dr.text((pts[2][0] - 5, 75), "x", fill=(160, 0, 0), font=f)
        prompt, ans, specific = (
            "Find the angle x in degrees.",
            str(a3),
            "What is the value of angle x in this triangle?",
        )
    elif kind == "rectangle":
        w, h = int(rng.integers(3, 25)), int(rng.integers(3, 25))
        dr.rectangle([80, 90, 340, 260], outline=(0, 0, 0), width=2)
        dr.text((200, 265), f"{w} cm", fill=(0, 0, 160), font=f)
        dr.text((345, 170), f"{h} cm", fill=(0, 0, 160), font=f)
        if rng.random() < 0.5:
            prompt, ans, specific = "Find the area.", str(w * h), "What is the area of the rectangle?"
        else:
            prompt, ans, specific = "Find the perimeter.", str(2 * (w + h)), "What is the perimeter of the rectangle?"
            kind = "perimeter"
    else:
        rad = int(rng.integers(2, 15))
        dr.ellipse([110, 70, 310, 270], outline=(0, 0, 0), width=2)
        dr.line([210, 170, 310, 170], fill=(0, 0, 0), width=2)
        dr.text((240, 150), f"r = {rad}", fill=(0, 0, 160), font=f)
        prompt, ans, specific = (
            "Find the area (use pi = 3.14).",
            f"{3.14 * rad * rad:.2f}",
            "What is the area of the circle (pi = 3.14)?",
        )
    g = rng.random() < 0.5
    if g:
        dr.text((10, 8), prompt, fill=(0, 0, 0), font=font(max(fs, 11)))
        q = str(rng.choice([GENERIC_IMAGE_Q, GENERIC_ANSWER]))
    else:
        q = specific
    img, attrs = degrade(img, rng, d_text)
    attrs.update({"font_px": fs, "distractors": n_distract})
    return Sample(img, q, ans, g, kind, d_text, d_clutter, attrs)
