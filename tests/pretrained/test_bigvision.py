"""mmjax/pretrained/bigvision.py. No real big_vision checkpoint is available offline, so
each test writes one: a transformers fixture loaded by hf.py, saved under big_vision's
names (the inverse of the loader's mapping), then read back by bigvision.load."""
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.pretrained import bigvision, hf
from parity import IMAGE_TOL, assert_same_tree, build, close, fixture, reference


def _bv_block(out: dict, name: str, block: dict) -> None:
    for ours, theirs in (("ln_attn", "LayerNorm_0"), ("ln_mlp", "LayerNorm_1")):
        for leaf in ("scale", "bias"):
            out[f"{name}/{theirs}/{leaf}"] = block[ours][leaf]
    for role, value in block["attn"].items():
        out[f"{name}/MultiHeadDotProductAttention_0/{role}/kernel"] = value["kernel"]
        out[f"{name}/MultiHeadDotProductAttention_0/{role}/bias"] = value["bias"]
    for ours, theirs in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
        for leaf in ("kernel", "bias"):
            out[f"{name}/MlpBlock_0/{theirs}/{leaf}"] = block["mlp"][ours][leaf]


def _bv_image(params: dict, out: dict) -> None:
    width = params["patch_embed"]["kernel"].shape[1]
    patch = int(round(np.sqrt(params["patch_embed"]["kernel"].shape[0] / 3)))
    out["img/embedding/kernel"] = params["patch_embed"]["kernel"].reshape(patch, patch, 3, width)
    out["img/embedding/bias"] = params["patch_embed"]["bias"]
    table = params["pos_embed"]["embedding"]
    if "cls" in params:  # big_vision adds no position to the class token: fold row 0 into it
        out["img/cls"] = (params["cls"] + table[0]).reshape(1, 1, width)
        table = table[1:]
    out["img/pos_embedding"] = table[None]
    layers = params["transformer"]
    for i in range(sum(k.startswith("layer_") for k in layers)):
        _bv_block(out, f"img/Transformer/encoderblock_{i}", layers[f"layer_{i}"])
    for leaf in ("scale", "bias"):
        out[f"img/Transformer/encoder_norm/{leaf}"] = layers["ln_final"][leaf]
    if "pool" in params and "probe" in params["pool"]:
        pool = params["pool"]
        out["img/MAPHead_0/probe"] = pool["probe"]
        _bv_block(out, "img/MAPHead_0", {"ln_attn": pool["ln"], "ln_mlp": pool["ln"], "attn": pool["attn"],
                                         "mlp": pool["mlp"]})
        del out["img/MAPHead_0/LayerNorm_1/scale"], out["img/MAPHead_0/LayerNorm_1/bias"]


def _bv_text(params: dict, out: dict) -> None:
    out["txt/Embed_0/embedding"] = params["token_embed"]["embedding"]
    out["txt/pos_embedding"] = params["pos_embed"]["embedding"][None]
    layers = params["transformer"]
    for i in range(sum(k.startswith("layer_") for k in layers)):
        _bv_block(out, f"txt/Encoder_0/encoderblock_{i}", layers[f"layer_{i}"])
    for leaf in ("scale", "bias"):
        out[f"txt/Encoder_0/encoder_norm/{leaf}"] = layers["ln_final"][leaf]
    out["txt/head/kernel"] = params["pool"]["dense"]["kernel"]
    out["txt/head/bias"] = params["pool"]["dense"]["bias"]


def _trees_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _trees_equal(a[k], b[k])
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _as_scanned(arrays: dict) -> dict:
    """big_vision's scanned layout: one 'encoderblock' whose arrays gain a leading layer axis."""
    out, blocks = {}, {}
    for key, value in arrays.items():
        head, sep, rest = key.partition("/encoderblock_")
        if not sep:
            out[key] = value
            continue
        index, _, leaf = rest.partition("/")
        blocks.setdefault(f"{head}/encoderblock/{leaf}", {})[int(index)] = value
    out.update({k: np.stack([v[i] for i in sorted(v)]) for k, v in blocks.items()})
    return out


def _siglip_npz(tmp_path, scanned=False):
    arrays = {}
    _bv_image(hf.load(fixture("siglip"), "image", scan=False)[1], arrays)
    _bv_text(hf.load(fixture("siglip"), "text", scan=False)[1], arrays)
    if scanned:
        arrays = _as_scanned(arrays)
    arrays["t"], arrays["b"] = np.array([2.0]), np.array([-3.0])  # logit scale and bias, as big_vision names them
    path = str(tmp_path / "siglip.npz")
    np.savez(path, **{"params/" + k: v for k, v in arrays.items()})
    return path


@pytest.mark.parametrize("scanned_file", [False, True])
@pytest.mark.parametrize("scan", [True, False])
def test_siglip_towers_match_the_transformers_ones(tmp_path, scan, scanned_file):
    path = _siglip_npz(tmp_path, scanned_file)
    for modality in ("image", "text"):
        values, params = bigvision.load(path, modality, scan=scan)
        _trees_equal(params, hf.load(fixture("siglip"), modality, scan=scan)[1])
    values, params = bigvision.load(path, "image", scan=scan)
    assert values["model"]["pooling"] == "map" and values["data"]["image_size"] == 32
    ref = reference("siglip")
    encoder = build("image", values, scan=scan)
    pixels = jnp.asarray(ref["pixel_values"].transpose(0, 2, 3, 1))
    batch = {"image": jnp.zeros(pixels.shape, jnp.uint8)}
    assert_same_tree(encoder, params, batch, train=False, pixels=pixels)
    tokens, _, pooled = encoder.apply({"params": params}, batch, train=False, pixels=pixels, return_pooled=True)
    close(tokens, ref["vision_last_hidden_state"], IMAGE_TOL)
    close(pooled, ref["vision_pooler_output"], IMAGE_TOL)
    text, _ = bigvision.load(path, "text")
    assert text["model"]["mask"] == "none" and text["model"]["pooling"] == "last"


def test_vit_with_class_token(tmp_path):
    arrays = {}
    _bv_image(hf.load(fixture("vit"), "image", scan=False)[1], arrays)
    path = str(tmp_path / "vit.npz")
    np.savez(path, **arrays)
    values, params = bigvision.load(path, "image")
    assert values["model"]["cls_token"] and values["model"]["pooling"] == "cls"
    # big_vision's own choices differ from this transformers ViT's: use the checkpoint's here.
    values["model"].update(activation="gelu", ln_eps=1e-12)
    ref = reference("vit")
    pixels = jnp.asarray(ref["pixel_values"].transpose(0, 2, 3, 1))
    tokens, _ = build("image", values).apply({"params": params}, {"image": pixels}, train=False, pixels=pixels)
    close(tokens, ref["last_hidden_state"], IMAGE_TOL)


def test_errors(tmp_path):
    path = str(tmp_path / "vit.npz")
    arrays = {}
    _bv_image(hf.load(fixture("vit"), "image", scan=False)[1], arrays)
    del arrays["img/Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias"]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"tensor 'img/Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias' is missing"):
        bigvision.load(path, "image")
    with pytest.raises(ValueError, match="no txt/"):
        bigvision.load(path, "text")
    with pytest.raises(ValueError, match="not 'audio'"):
        bigvision.load(path, "audio")
