"""Just enough of ONNX's protobuf wire format to find external-data references, without the `onnx` package.

ONNX Runtime resolves a tensor stored as external data (`data_location: EXTERNAL`, `location: w.bin`)
against a folder outside the bundle's hash gate (the current directory, for a graph loaded from bytes).
A bundle is closed, so a graph that refers to any file is refused before ONNX Runtime sees it. The walk
visits every place a tensor can live: initializers, sparse initializers, node attributes (Constant
values, tensor lists) and every subgraph (If / Loop / Scan bodies) and function body, at any depth.
"""

from __future__ import annotations

from typing import Any, Iterator

# (message, field number) -> message type of that length-delimited field, for the fields that can lead to a tensor
_CHILDREN = {
    ("model", 7): "graph",
    ("model", 25): "function",
    ("graph", 1): "node",
    ("graph", 5): "tensor",
    ("graph", 15): "sparse",
    ("function", 7): "node",
    ("node", 5): "attribute",
    ("attribute", 5): "tensor",
    ("attribute", 6): "graph",
    ("attribute", 10): "tensor",
    ("attribute", 11): "graph",
    ("attribute", 22): "sparse",
    ("attribute", 23): "sparse",
    ("sparse", 1): "tensor",
    ("sparse", 2): "tensor",
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1
MAX_DEPTH = 64


class ProtoError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ProtoError("truncated or overlong varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value or sub-buffer) for each field of one message."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield num, wire, value
        elif wire == 1:
            i += 8
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > n:
                raise ProtoError("a length-delimited field runs past its message")
            yield num, wire, buf[i : i + size]
            i += size
        elif wire == 5:
            i += 4
        else:
            raise ProtoError(f"unsupported wire type {wire}")
        if i > n:
            raise ProtoError("a fixed-size field runs past its message")


def external_data(model: bytes) -> list[str]:
    """The external-data locations a serialized ModelProto refers to (empty for a self-contained graph)."""
    found: list[str] = []
    stack = [(memoryview(model), "model", 0)]
    while stack:
        buf, kind, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ProtoError("messages nested too deeply")
        for num, wire, value in _fields(buf):
            if kind == "tensor":
                if num == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL:
                    found.append("")
                elif num == _TENSOR_EXTERNAL_DATA and wire == 2:
                    entry = {k: bytes(v).decode("utf-8", "replace") for k, w, v in _fields(value) if w == 2}
                    if entry.get(1) == "location":
                        found.append(entry.get(2, ""))
            elif wire == 2 and (kind, num) in _CHILDREN:
                stack.append((value, _CHILDREN[(kind, num)], depth + 1))
    return sorted(set(found), key=lambda x: (x == "", x))
