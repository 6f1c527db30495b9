"""The one session factory: provider order and fallback, accelerators that do not bind, the IO-binding path."""

from __future__ import annotations

import pytest

from lr_onnx.runtime.errors import ProviderError
from lr_onnx.runtime.router import DEFAULT_BUNDLE
from lr_onnx.runtime.sessions import new_session, resolve_providers


def test_provider_selection_and_fallback():
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ProviderError, match="not offered by this onnxruntime"):
            resolve_providers("cuda")
        assert resolve_providers("auto") == ["CPUExecutionProvider"]
    s = new_session(DEFAULT_BUNDLE / "router.onnx", provider="auto")
    assert s.get_providers()[-1] == "CPUExecutionProvider"


def test_requested_accelerator_that_does_not_bind_warns(monkeypatch):
    """The GPU wheel on a CPU-only host lists CUDA but binds CPU: one warning, no crash."""
    import lr_onnx.runtime.sessions as sessions

    monkeypatch.setattr(sessions, "resolve_providers", lambda p: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    import onnxruntime as ort

    real = ort.InferenceSession

    def fake(path, so, providers):
        return real(path, so, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", fake)
    with pytest.warns(UserWarning, match="requested CUDAExecutionProvider but onnxruntime bound"):
        sessions.new_session(DEFAULT_BUNDLE / "router.onnx", provider="cuda")


def test_io_binding_path_matches_plain_run(monkeypatch):
    """Batches on a GPU provider go through an IO binding; here the same code runs with device "cpu"."""
    import numpy as np

    import lr_onnx.runtime.sessions as sessions

    s = new_session(DEFAULT_BUNDLE / "router.onnx", provider="cpu")
    rng = np.random.default_rng(0)
    k, p_in = 5, s.get_inputs()[1].shape[2]
    feeds = {
        "query": rng.standard_normal((7, 1667)).astype(np.float32),
        "model_feat": rng.standard_normal((7, k, p_in)).astype(np.float32),
        "avail": rng.random((7, k)) > 0.3,
    }
    plain = s.run(None, feeds)
    for a, b in zip(plain, sessions.run_bound(s, feeds, "cpu")):
        np.testing.assert_array_equal(a, b)
    calls = []
    monkeypatch.setattr(sessions, "run_bound", lambda sess, f, device: calls.append(device) or plain)

    class OnCuda:  # what a CUDA-bound session reports
        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    assert sessions.run(OnCuda(), feeds) is plain and calls == ["cuda"]
    one = {n: v[:1] for n, v in feeds.items()}
    assert len(sessions.run(s, one)) == 4 and calls == ["cuda"]  # B=1 on CPU: plain run
