"""lr-onnx: LatentRouter for multimodal model routing, served by ONNX Runtime.

Nothing is imported eagerly: `Router` and friends resolve on first use, so
`import lr_onnx` stays cheap and never pulls torch.
"""
from .version import __version__

__all__ = ["__version__"]
