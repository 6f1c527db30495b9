"""Converters from the paper's benchmarks to the native format (method.md §6.3, §6.4).

Each converter reads a published layout and writes a native dataset folder, then
stops: loading, splits and training only ever see the native format. Output is
built in a temporary sibling folder and renamed into place at the end, so a failed
conversion leaves nothing behind. Archives are extracted member by member under
explicit checks, and pickles are read with an unpickler that refuses every class.
"""

from .mmr import convert_mmr, mmr_image_for
from .safe_io import load_plain_pickle, safe_extract
from .vl_routerbench import convert_vl_routerbench

__all__ = ["convert_mmr", "convert_vl_routerbench", "load_plain_pickle", "mmr_image_for", "safe_extract"]
