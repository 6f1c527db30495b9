"""The pretrained encoders load from the wheels, classify real photos, and share the runtime preprocessing."""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lr_onnx.export.train.encoders import load_image_encoder, load_text_encoder, minilm_dir  # noqa: E402
from lr_onnx.export.train.encoding import IMAGE_SPEC, TEXT_SPEC  # noqa: E402
from lr_onnx.runtime.preprocess import ImageSpec, image_tensor, load_tokenizer, preprocess_image, tokenize


@pytest.fixture(scope="module")
def image_encoder():
    return load_image_encoder()


@pytest.mark.parametrize(
    "name,classes",
    [
        ("chelsea", {281, 282, 285}),  # tabby, tiger cat, Egyptian cat
        ("coffee", {967, 968}),  # espresso, cup
        ("rocket", {657, 744, 812}),  # missile, projectile, space shuttle
    ],
)
def test_efficientnet_lite0_classifies_sample_photos(image_encoder, name, classes):
    import skimage.data

    x = preprocess_image(getattr(skimage.data, name)(), IMAGE_SPEC)
    with torch.no_grad():
        top3 = set(image_encoder.logits(torch.from_numpy(x[None])).topk(3).indices[0].tolist())
    assert top3 & classes, top3


def test_image_features_are_1280d_pooled(image_encoder):
    x = np.zeros((2, 3, 224, 224), np.float32)
    with torch.no_grad():
        assert image_encoder(torch.from_numpy(x)).shape == (2, 1280)


def test_minilm_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    qs = ["What is the total amount on this receipt?", "hi", "Which segment is the largest in the pie chart?"]
    tok = load_tokenizer(minilm_dir() / "tokenizer.json", TEXT_SPEC)
    ids, mask = tokenize(tok, qs)
    with torch.no_grad():
        ours = torch.nn.functional.normalize(load_text_encoder()(torch.from_numpy(ids), torch.from_numpy(mask)), dim=-1)
    ref = st.SentenceTransformer(str(minilm_dir()), device="cpu").encode(qs, normalize_embeddings=True)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)


def test_one_preprocessing_for_every_input_form(tmp_path):
    """Path, bytes, PIL image and array of the same picture give the identical tensor."""
    import skimage.data
    from PIL import Image

    arr = skimage.data.astronaut()
    Image.fromarray(arr).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    outs = [
        preprocess_image(s, IMAGE_SPEC)
        for s in (tmp_path / "a.png", str(tmp_path / "a.png"), data, Image.open(io.BytesIO(data)), arr)
    ]
    for o in outs[1:]:
        np.testing.assert_array_equal(outs[0], o)
    assert outs[0].shape == (3, 224, 224) and outs[0].dtype == np.float32


def test_letterbox_keeps_the_whole_picture():
    from PIL import Image

    img = Image.new("RGB", (400, 100), (255, 255, 255))
    x = image_tensor(img, ImageSpec(size=64))
    white = (1 - 0.5) / 0.5
    assert np.allclose(x[:, 32, :], white)  # the middle row is picture, edge to edge
    assert not np.allclose(x[:, 0, :], white)  # top rows are padding
