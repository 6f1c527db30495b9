"""lr-onnx: LatentRouter for multimodal model routing, served by ONNX Runtime.

Nothing heavy is imported eagerly: `Router` and friends resolve on first use, so
`import lr_onnx` stays cheap and never pulls torch.
"""
from .version import __version__

__all__ = ["Router", "Decision", "Candidate", "__version__"]


def __getattr__(name):
    if name in ("Router", "Decision", "Candidate"):
        from .runtime import router

        return getattr(router, name)
    raise AttributeError(f"module 'lr_onnx' has no attribute {name!r}")
