"""Memory settings per source of a merged set, applied by a neighbour vote (issue 21).

`lr-onnx data merge` labels each query `SOURCE/label`. On such a merge one memory setting does not fit every
source: alone, blindtest routes best from its 16 nearest queries and dynamath from its 256, and on their merge a
single choice made dynamath's queries pay (`benchmarks/results/memory_per_source.json`). So the memory may carry
a setting per source (k, kappa, tau; the retrieval space is shared) and each row's source. A query takes the
setting of the source most of its VOTE_K nearest rows come from (the vote named the true source for 99.6% of
real_merged's test queries); rows added later (`models add`, feedback) have no source and do not vote, and a
query none of whose neighbours has one keeps the memory's own setting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:  # annotations only: runtime.memory imports this module
    from .memory import MemorySettings

VOTE_K = 16  # neighbours that vote for a query's source
FILE = "memory_sources.npy"  # [N, 1] each memory row's source (its index in `names`; -1: none), fp16
MAX_SOURCES = 256


class Sources:
    """Each memory row's source (`of_row` `[N]`, -1: none) and each source's settings."""

    def __init__(self, names: Sequence[str], settings: Sequence["MemorySettings"], of_row: Any):
        self.names, self.settings = tuple(names), tuple(settings)
        self.of_row = np.asarray(of_row, np.int16).reshape(-1)

    @property
    def k(self) -> int:
        """The most neighbours any source reads."""
        return max(st.k for st in self.settings)

    def vote(self, idx: np.ndarray) -> np.ndarray:
        """`[B]` the source most of each query's VOTE_K nearest rows come from (`idx` `[B, k]`, nearest first; ties:
        the first source), -1 where none of them has one."""
        near = self.of_row[idx[:, :VOTE_K]]
        counts = np.stack([(near == c).sum(axis=1) for c in range(len(self.names))], axis=1)
        return np.where(counts.max(axis=1) > 0, counts.argmax(axis=1), -1)

    def take(self, rows: Any) -> "Sources":
        """The sources of the rows kept (`rows` a boolean mask or indices over the memory's rows)."""
        return Sources(self.names, self.settings, self.of_row[rows])

    def grown(self, n: int) -> "Sources":
        """With `n` rows appended that have no source (a model added later, feedback)."""
        return Sources(self.names, self.settings, np.concatenate([self.of_row, np.full(n, -1, np.int16)]))

    def array(self) -> np.ndarray:
        return self.of_row.astype(np.float16)[:, None]

    def entry(self) -> dict[str, Any]:
        return settings_entry(zip(self.names, self.settings))


def settings_entry(pairs: Iterable[tuple[str, "MemorySettings"]]) -> dict[str, Any]:
    """The manifest's `memory.sources`: each source's name and settings (the file is in `memory.files`)."""
    pairs = list(pairs)
    return {"names": [n for n, _ in pairs], "settings": [st.to_dict() for _, st in pairs]}


def row_codes(values: np.ndarray, n_sources: int, where: str) -> np.ndarray:
    """`[N]` source codes from the file's `[N, 1]` array, each an integer in [-1, n_sources)."""
    from .errors import BundleError

    v = np.asarray(values, np.float64).reshape(-1)
    if not np.all(np.isfinite(v)) or np.any(v != np.round(v)) or np.any((v < -1) | (v >= n_sources)):
        raise BundleError(f"{where}: {FILE} must hold integers from -1 to {n_sources - 1}")
    return v.astype(np.int16)


def source_of(label: str) -> str | None:
    """The source of a `data merge` label (`SOURCE/label`); None for a label without one."""
    return label.split("/", 1)[0] if "/" in label else None
