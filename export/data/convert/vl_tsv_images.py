"""VL-RouterBench's pictures, kept base64 in its benchmark TSV tables: decoded on demand, written once, looked up
by sample or workbook id."""

from __future__ import annotations

import ast
import base64
import csv
import io
import re
from pathlib import Path

from ..format import safe_relative_path
from .safe_io import copy_image


def find_dir(root: Path, name: str) -> Path | None:
    """A folder of the VL-RouterBench release, at the top or under vlm_router_data/."""
    for cand in (root / name, root / "vlm_router_data" / name):
        if cand.is_dir():
            return cand
    return None


class TsvImages:
    """Decode base64 images from `TSV_images/<DATASET>.tsv` into the output folder, on demand."""

    def __init__(self, root: Path, out: Path, warn: list[str]):
        self.dir = find_dir(root, "TSV_images")
        self.root, self.out, self.warn = root, out, warn
        self.cache: dict[str, tuple[list[dict], dict[str, int]]] = {}
        self.failed = 0

    def _table(self, name: str):
        if name not in self.cache:
            rows, by_index = [], {}
            path = self.dir / Path(name).name if self.dir else None
            if path is not None and path.is_file():
                previous = csv.field_size_limit(1 << 30)  # base64 images; the global limit is restored below
                try:
                    with open(path, newline="", encoding="utf-8") as fh:
                        for j, r in enumerate(csv.DictReader(fh, delimiter="\t")):
                            rows.append(r)
                            by_index[str(r.get("index"))] = j
                finally:
                    csv.field_size_limit(previous)
            elif path is not None:
                self.warn.append(f"TSV file {name} not found")
            self.cache[name] = (rows, by_index)
        return self.cache[name]

    def _decode(self, rows, by_index, j: int, stem: str) -> list[str]:
        cell = rows[j].get("image") or ""
        for _ in range(4):  # a short cell refers to another row's image
            if len(cell) <= 64 and cell in by_index:
                cell = rows[by_index[cell]].get("image") or ""
            else:
                break
        blobs = [cell]
        if cell.startswith("["):
            try:
                blobs = [str(b) for b in ast.literal_eval(cell)]
            except (ValueError, SyntaxError):
                blobs = []
        paths = []
        for n, b in enumerate(blobs):
            try:
                raw = base64.b64decode(b, validate=False)
                from PIL import Image

                with Image.open(io.BytesIO(raw)) as im:
                    ext = (im.format or "png").lower().replace("jpeg", "jpg")
            except Exception:  # any undecodable image becomes "no image", counted
                self.failed += 1
                continue
            rel = f"images/{stem}_{n}.{ext}"
            (self.out / "images").mkdir(exist_ok=True)
            (self.out / rel).write_bytes(raw)
            paths.append(rel)
        return paths

    def images_for(self, sid: str, assets: list) -> list[str]:
        out = []
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", sid)
        for a in assets:
            if not isinstance(a, dict):
                continue
            if a.get("type") == "image_tsv" and self.dir is not None:
                rows, by_index = self._table(str(a.get("tsv_file", "")))
                j = a.get("index")
                if isinstance(j, int) and 0 <= j < len(rows):
                    out += self._decode(rows, by_index, j, stem)
                else:
                    self.failed += 1
            elif a.get("type") == "image":
                rel = safe_relative_path(str(a.get("uri", "")))
                if rel is not None and self.root.joinpath(*rel.parts).is_file():
                    out.append(copy_image(self.root, str(rel), self.out))
                else:
                    self.failed += 1
        return out

    def by_workbook_id(self, dataset: str, wid: str, sid: str) -> list[str]:
        rows, by_index = self._table(f"{dataset}.tsv")
        j = by_index.get(str(wid))
        if j is None:
            return []
        return self._decode(rows, by_index, j, re.sub(r"[^A-Za-z0-9_.-]", "_", sid))
