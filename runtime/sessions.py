"""The only place that creates ONNX Runtime sessions, and it says which providers it bound.

Order for `auto`: TensorRT (fp16, engine cache in the user cache dir) -> CUDA -> CPU,
filtered by what this onnxruntime offers. An explicit provider that is not offered
raises `ProviderError` listing the ones that are; one that is offered but does not
bind (a GPU wheel on a machine without a usable GPU) falls back to CPU with one
warning line. Batches on a GPU provider run through an IO binding (`run`). The
truth is read from `session.get_providers()`, never from `get_device()`.
"""

from __future__ import annotations

import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .errors import BundleError, LrOnnxWarning, MissingDependencyError, ProviderError
from .manifest import needed_graphs

if TYPE_CHECKING:  # annotations only
    from .bundle import Bundle

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
INSTALL_HINT = (
    "onnxruntime is not installed: pip install 'lr-onnx[cpu]' (or 'lr-onnx[gpu]' for CUDA); install exactly one of them"
)


def ort() -> Any:
    """The onnxruntime module, or a one-line install hint."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(INSTALL_HINT) from None
    if not hasattr(onnxruntime, "InferenceSession"):
        raise MissingDependencyError(
            "onnxruntime is broken (no InferenceSession): the CPU and GPU wheels were "
            "installed together; pip uninstall -y onnxruntime onnxruntime-gpu, then "
            "install one of lr-onnx[cpu] / lr-onnx[gpu]"
        )
    return onnxruntime


def cache_root() -> Path:
    """`$LR_ONNX_CACHE`, else `$XDG_CACHE_HOME/lr-onnx`, else `~/.cache/lr-onnx` (never the temp dir)."""
    return Path(
        os.environ.get("LR_ONNX_CACHE")
        or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "lr-onnx")
    )


def trt_cache_dir() -> Path:
    return cache_root() / "tensorrt"


def resolve_providers(provider: str = "auto") -> list[Any]:
    """Provider list for `InferenceSession`, most preferred first (CPU always last)."""
    rt = ort()
    available = rt.get_available_providers()
    if provider not in ("auto", *PROVIDERS):
        raise ProviderError(f"unknown provider '{provider}'; choose auto, cpu, cuda or tensorrt")
    if provider == "auto":
        wanted = [p for p in ("tensorrt", "cuda") if PROVIDERS[p] in available]
    elif provider == "cpu":
        wanted = []
    else:
        if PROVIDERS[provider] not in available:
            names = ", ".join(k for k, v in PROVIDERS.items() if v in available)
            raise ProviderError(
                f"provider '{provider}' is not offered by this onnxruntime (available: {names}); "
                f"install lr-onnx[gpu] on a CUDA machine or use --provider cpu"
            )
        wanted = [provider] + (["cuda"] if provider == "tensorrt" and PROVIDERS["cuda"] in available else [])
    out: list[Any] = []
    for p in wanted:
        if p == "tensorrt":
            cache = trt_cache_dir()
            out.append(
                (
                    PROVIDERS[p],
                    {
                        "trt_fp16_enable": True,
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache),
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": str(cache),
                    },
                )
            )
        else:
            out.append(PROVIDERS[p])
    return out + ["CPUExecutionProvider"]


def session_options(*, threads: int | None = None, spinning: bool = False) -> Any:
    rt = ort()
    so = rt.SessionOptions()
    so.log_severity_level = 3  # per session: the host application's ORT logging stays untouched
    so.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return so


def save_optimized(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """Write graph `path` to `out` as ONNX Runtime optimises it at the BASIC level (constant folding, redundant-node
    elimination): plain ONNX ops only, portable across machines and providers (the exporter's offline step)."""
    rt = ort()
    so = rt.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(out)
    rt.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def new_session(
    model: bytes | str | os.PathLike[str],
    *,
    name: str | None = None,
    provider: str = "auto",
    threads: int | None = None,
    spinning: bool = False,
) -> Any:
    """An InferenceSession for a graph (its bytes, as `Bundle.read` returns them, or a path); warns once if an
    accelerator was requested but CPU was bound. A graph ONNX Runtime refuses is a `BundleError`."""
    rt = ort()
    name = name or (Path(model).name if not isinstance(model, (bytes, bytearray)) else "graph")
    providers = resolve_providers(provider)
    if any(isinstance(p, tuple) and p[0] == PROVIDERS["tensorrt"] for p in providers):
        trt_cache_dir().mkdir(parents=True, exist_ok=True)
    src = bytes(model) if isinstance(model, (bytes, bytearray)) else str(model)
    with _ort_errors(f"{name} cannot be loaded"):
        sess = rt.InferenceSession(src, session_options(threads=threads, spinning=spinning), providers=providers)
    bound = sess.get_providers()
    requested = [p[0] if isinstance(p, tuple) else p for p in providers]
    if requested[0] != "CPUExecutionProvider" and requested[0] not in bound:
        warnings.warn(
            f"requested {requested[0]} but onnxruntime bound {bound} for {name}; running on CPU",
            LrOnnxWarning,
            stacklevel=2,
        )
    return sess


ACCELERATORS = (PROVIDERS["tensorrt"], PROVIDERS["cuda"])


@contextmanager
def _ort_errors(what: str) -> Iterator[None]:
    """ONNX Runtime's own exceptions (a graph that does not fit its inputs, a corrupt model) as `BundleError`."""
    try:
        yield
    except Exception as e:  # ORT's pybind exceptions share no base class beyond Exception
        if type(e).__module__.split(".")[0] != "onnxruntime":
            raise
        raise BundleError(f"{what}: {str(e).splitlines()[0][:200]}") from None


def run(sess: Any, feeds: dict[str, Any]) -> list[Any]:
    """`sess.run`, except for batches on a GPU provider: there through an IO binding (`run_bound`)."""
    batch = len(next(iter(feeds.values())))
    with _ort_errors("a bundle graph failed to run"):
        if batch > 1 and sess.get_providers()[0] in ACCELERATORS:
            return run_bound(sess, feeds, "cuda")
        return list(sess.run(None, feeds))


def run_bound(sess: Any, feeds: dict[str, Any], device: str = "cuda") -> list[Any]:
    """Run with an IO binding: each input copied to `device` once as an OrtValue, every output allocated
    on the device and copied back once, with no host staging buffers in between (the CUDA path for batches;
    on this CPU-only project it is tested with device "cpu", never run on a GPU)."""
    import numpy as np

    rt = ort()
    binding = sess.io_binding()
    for name, arr in feeds.items():
        binding.bind_ortvalue_input(name, rt.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), device, 0))
    for out in sess.get_outputs():
        binding.bind_output(out.name, device)
    sess.run_with_iobinding(binding)
    return list(binding.copy_outputs_to_cpu())


def installed_ort_distributions() -> list[str]:
    """Names and versions of the installed onnxruntime wheels (two of them is a broken install)."""
    from importlib import metadata

    out = []
    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"):
        try:
            out.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return out


SMALL_BATCH = 4  # router batches up to this size run single-threaded on the CPU (`BundleSessions.for_rows`)


class BundleSessions:
    """A bundle's graphs as sessions, created on first use (thread-safe) through `new_session`, each checked
    against its manifest entry before it is used."""

    # the element type of every graph input and output the runtime feeds or reads (fp16 bundles keep fp32 IO)
    DTYPES = {
        "query": "tensor(float)",
        "model_feat": "tensor(float)",
        "avail": "tensor(bool)",
        "keys": "tensor(float)",
        "pixels": "tensor(float)",
        "input_ids": "tensor(int64)",
        "attention_mask": "tensor(int64)",
    }

    def __init__(
        self,
        bundle: "Bundle",
        widths: dict[str, int],
        *,
        provider: str = "auto",
        threads: int | None = None,
        spinning: bool = False,
    ):
        self.bundle, self.widths = bundle, widths  # widths: the last dimension each named input must have
        self.provider, self.threads, self.spinning = provider, threads, spinning
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def loaded(self) -> list[str]:
        """The sessions made so far (a name, or `name:small` for a single-threaded twin)."""
        return sorted(self._sessions)

    def get(self, name: str, *, small: bool = False) -> Any:
        """The graph's session, created on first use. `small`: the router's single-threaded twin for batches of
        at most SMALL_BATCH rows on the CPU, where the graph is dispatch-bound (396 small nodes) and handing
        each node to a second thread costs more than it saves (0.75 ms against 1.0 ms at B=1, 2 cores)."""
        key = name + (":small" if small else "")
        s = self._sessions.get(key)
        if s is None:
            from .bundle import self_contained

            with self._lock:
                s = self._sessions.get(key)
                if s is None:
                    file = self.bundle.manifest.graphs[name].file
                    data = self.bundle.read(file)
                    self_contained(data, self.bundle.path, file)
                    s = new_session(
                        data,
                        name=file,
                        provider=self.provider,
                        threads=1 if small else self.threads,
                        spinning=self.spinning,
                    )
                    self.check(name, s)
                    self._sessions[key] = s
        return s

    def for_rows(self, name: str, rows: int) -> Any:
        """The session for a batch of `rows`: the single-threaded twin for small batches on the CPU."""
        full = self.get(name)
        if rows <= SMALL_BATCH and full.get_providers()[0] == "CPUExecutionProvider":
            return self.get(name, small=True)
        return full

    def bound_providers(self) -> dict[str, list[str]]:
        return {n: self.get(n).get_providers() for n in needed_graphs(self.bundle.manifest.reads_images)}

    def check(self, name: str, sess: Any) -> None:
        """A graph must have the inputs and outputs its manifest entry lists (names, ranks, fixed sizes) and the
        element types the runtime feeds: a graph copied over another one (with its hash updated) is one
        `BundleError` line at load, not an ONNX Runtime traceback at the first query. The pool must fit the
        router (a hand-edited profile of another width would not)."""
        spec, where = self.bundle.manifest.graphs[name], self.bundle.path
        for kind, got in (("inputs", sess.get_inputs()), ("outputs", sess.get_outputs())):
            want = spec.inputs if kind == "inputs" else spec.outputs
            if sorted(a.name for a in got) != sorted(want):
                raise BundleError(
                    f"{where}: graph {spec.file} has {kind} "
                    f"{', '.join(sorted(a.name for a in got)) or 'none'}, the manifest lists "
                    f"{', '.join(sorted(want)) or 'none'} for {name}"
                )
            for a in got:
                dims = want[a.name]
                fixed = [(i, d) for i, d in enumerate(dims) if isinstance(d, int)]
                if len(a.shape) != len(dims) or any(isinstance(a.shape[i], int) and a.shape[i] != d for i, d in fixed):
                    raise BundleError(
                        f"{where}: graph {spec.file} {kind[:-1]} {a.name} has shape "
                        f"{list(a.shape)}, the manifest gives {dims}"
                    )
                if kind == "inputs" and a.name in self.DTYPES and a.type != self.DTYPES[a.name]:
                    raise BundleError(
                        f"{where}: graph {spec.file} input {a.name} is {a.type}, the "
                        f"runtime feeds {self.DTYPES[a.name]}"
                    )
                if a.name in self.widths and isinstance(a.shape[-1], int) and a.shape[-1] != self.widths[a.name]:
                    raise BundleError(
                        f"{where}: router graph input {a.name} has width {a.shape[-1]}, "
                        f"the manifest gives {self.widths[a.name]}"
                    )
