"""lr-onnx: LatentRouter for multimodal model routing, served by ONNX Runtime.

Nothing is imported eagerly: `Router`, the error classes and `__version__` resolve on first use, so
`import lr_onnx` stays cheap and never pulls torch. It also keeps this file free of relative imports,
which matters because the repository root is the package: pytest imports this file as a lone module
when a clone's folder name is not an identifier (`git clone ... lr-onnx`), and a relative import at
the top level would fail there (tests/test_imports.py runs the suite's collection from such a folder).
"""

import importlib

_LAZY = {
    "Router": "runtime.router",
    "Decision": "runtime.router",
    "Candidate": "runtime.router",
    "LrOnnxError": "runtime.errors",
    "InputError": "runtime.errors",
    "OptionError": "runtime.errors",
    "DataError": "runtime.errors",
    "BundleError": "runtime.errors",
    "ProviderError": "runtime.errors",
    "MissingDependencyError": "runtime.errors",
    "__version__": "version",
}
__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY and __package__:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __package__), name)
    raise AttributeError(f"module 'lr_onnx' has no attribute {name!r}")
