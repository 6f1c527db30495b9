"""`lr-onnx serve`: the router as an OpenAI-compatible gateway (Starlette on uvicorn, httpx, prometheus-client).

Never imports torch or the training side; `pip install ".[cpu,serve]"`.
"""
