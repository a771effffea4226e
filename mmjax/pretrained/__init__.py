"""Pretrained parameters: loaders per source, each giving params in mmjax's layout.

    export.py      config.init_from (an mmjax export folder) and config.frozen
    hf.py          a transformers folder (config.json + model.safetensors) -> encoder config + params
    bigvision.py   a big_vision ViT / SigLIP .npz -> encoder config + params

The export loader's public names stay importable from here (train.py uses
`pretrained.load_into` and `pretrained.freeze`).
"""
from mmjax.pretrained.export import (  # noqa: F401
    FROZEN,
    TRAINED,
    freeze,
    frozen_labels,
    load_into,
    matches,
    param_name,
    read_export_params,
)
