"""mmjax/pretrained/hf.py + the encoder options: each tiny transformers checkpoint in
fixtures/, loaded into its mmjax encoder, gives transformers' own last hidden states and
pooled outputs (reference.npz, written by make_fixtures.py) on the same model inputs:
pixel_values, input_ids or input_features from the reference itself, so only the model
is compared here (the raw files through the preprocessing: test_preprocess_parity.py)."""
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.pretrained import hf
from parity import AUDIO_TOL, IMAGE_TOL, TEXT_TOL, assert_same_tree, build, close, fixture, reference


def nhwc(pixel_values):
    return jnp.asarray(pixel_values.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("family,prefix", [("vit", ""), ("clip", "vision_"), ("siglip", "vision_")])
def test_image_towers(family, prefix, scan):
    values, params = hf.load(fixture(family), "image", scan=scan)
    ref = reference(family)
    encoder = build("image", values, scan=scan)
    pixels = nhwc(ref["pixel_values"])
    batch = {"image": jnp.zeros(pixels.shape, jnp.uint8)}
    assert_same_tree(encoder, params, batch, train=False, pixels=pixels)
    tokens, mask, pooled = encoder.apply({"params": params}, batch, train=False, pixels=pixels, return_pooled=True)
    close(tokens, ref[prefix + "last_hidden_state"], IMAGE_TOL)
    assert bool(mask.all())
    if family == "clip":  # CLIPModel's vision pooler_output is already projected: compare the projection of ours
        projection = hf.Checkpoint(fixture(family)).tensors["visual_projection.weight"]
        pooled = pooled @ projection.T
    close(pooled, ref[prefix + "pooler_output"], IMAGE_TOL)


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("family,prefix", [("bert", ""), ("clip", "text_"), ("siglip", "text_")])
def test_text_towers(family, prefix, scan):
    values, params = hf.load(fixture(family), "text", scan=scan)
    ref = reference(family)
    ids = jnp.asarray(ref["input_ids"], jnp.int32)
    encoder = build("text", values, scan=scan, text_length=ids.shape[1])
    batch = {"text": ids}
    assert_same_tree(encoder, params, batch, train=False)
    tokens, mask, pooled = encoder.apply({"params": params}, batch, train=False, return_pooled=True)
    close(tokens, ref[prefix + "last_hidden_state"], TEXT_TOL)
    np.testing.assert_array_equal(np.asarray(mask), ref["attention_mask"].astype(bool))
    if family == "clip":
        projection = hf.Checkpoint(fixture(family)).tensors["text_projection.weight"]
        pooled = pooled @ projection.T
    close(pooled, ref[prefix + "pooler_output"], TEXT_TOL)


@pytest.mark.parametrize("scan", [True, False])
def test_whisper_encoder(scan):
    values, params = hf.load(fixture("whisper"), "audio", scan=scan)
    ref = reference("whisper")
    encoder = build("audio", values, scan=scan)
    features = jnp.asarray(ref["input_features"].transpose(0, 2, 1))
    batch = {"audio": jnp.zeros((1, values["data"]["audio_samples"])), "audio_length": jnp.array([100])}
    assert_same_tree(encoder, params, batch, train=False)
    tokens, _ = encoder.apply({"params": params}, batch, train=False, features=features)
    close(tokens, ref["last_hidden_state"], AUDIO_TOL)


def test_values_are_read_from_the_checkpoint():
    image, _ = hf.load(fixture("siglip"), "image")
    assert image["model"]["pooling"] == "map" and image["model"]["activation"] == "gelu_tanh"
    assert image["model"]["ln_eps"] == 1e-6 and image["data"]["image_size"] == 32
    assert image["model"]["pixel_mean"] == (0.48, 0.46, 0.41)
    text, _ = hf.load(fixture("bert"), "text")
    assert text["model"]["norm"] == "post" and text["model"]["type_vocab"] == 2 and text["model"]["vocab_size"] == 43
    clip, _ = hf.load(fixture("clip"), "text")
    assert clip["model"]["causal"] and clip["model"]["eos_id"] == 79 and clip["model"]["activation"] == "quick_gelu"
    audio, _ = hf.load(fixture("whisper"), "audio")
    assert audio["model"]["chunk"] == 32000 and audio["model"]["max_positions"] == 100
    assert audio["data"]["audio_rate"] == 16000


def test_other_image_size_interpolates_positions():
    values, params = hf.load(fixture("vit"), "image", image_size=48)
    assert params["pos_embed"]["embedding"].shape == (1 + 6 * 6, 32)
    encoder = build("image", values)
    tokens, _ = encoder.apply({"params": params}, {"image": jnp.zeros((1, 48, 48, 3), jnp.uint8)}, train=False)
    assert tokens.shape == (1, 37, 32) and bool(jnp.all(jnp.isfinite(tokens)))


def _copy(src, dst, skip=()):
    import shutil

    shutil.copytree(src, dst)
    if skip:
        from safetensors.numpy import load_file, save_file

        file = dst / "model.safetensors"
        tensors = load_file(str(file))
        for name, value in skip:
            if value is None:
                del tensors[name]
            else:
                tensors[name] = value
        save_file(tensors, str(file))


def test_errors_name_the_checkpoint_and_the_tensor(tmp_path):
    with pytest.raises(ValueError, match=r"model_type='bert' has no image tower.*known: clip"):
        hf.load(fixture("bert"), "image")
    broken = tmp_path / "missing"
    _copy(fixture("vit"), broken, skip=[("encoder.layer.1.output.dense.weight", None)])
    with pytest.raises(ValueError, match=rf"{broken}: tensor 'encoder.layer.1.output.dense.weight' is missing"):
        hf.load(str(broken), "image")
    reshaped = tmp_path / "shape"
    _copy(fixture("bert"), reshaped, skip=[("embeddings.word_embeddings.weight", np.zeros((43, 31), np.float32))])
    with pytest.raises(ValueError, match=r"tensor 'embeddings.word_embeddings.weight' has shape \[43, 31\] but"):
        hf.load(str(reshaped), "text")
    with pytest.raises(ValueError, match="no config.json"):
        hf.load(str(tmp_path), "text")


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_zero_shot_logits(family):
    """The two loaded towers' pooled outputs + hf.contrastive's projections and scale/bias
    give transformers' logits_per_image."""
    ref = reference(family)
    head = hf.contrastive(fixture(family))
    embeds = {}
    for modality, inputs in (("image", {"pixels": nhwc(ref["pixel_values"])}), ("text", {})):
        values, params = hf.load(fixture(family), modality)
        if modality == "text":
            ids = jnp.asarray(ref["input_ids"], jnp.int32)
            encoder, batch = build("text", values, text_length=ids.shape[1]), {"text": ids}
        else:
            encoder, batch = build("image", values), {"image": jnp.zeros(inputs["pixels"].shape, jnp.uint8)}
        _, _, pooled = encoder.apply({"params": params}, batch, train=False, return_pooled=True, **inputs)
        if head[f"{modality}_proj"] is not None:
            pooled = pooled @ head[f"{modality}_proj"]
        embeds[modality] = pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True)
    close(embeds["image"], ref["image_embeds"], IMAGE_TOL)
    close(embeds["text"], ref["text_embeds"], TEXT_TOL)
    logits = np.exp(head["log_scale"]) * embeds["image"] @ embeds["text"].T + head["bias"]
    close(logits, ref["logits_per_image"], IMAGE_TOL)
    with pytest.raises(ValueError, match="not a contrastive two-tower model"):
        hf.contrastive(fixture("vit"))
