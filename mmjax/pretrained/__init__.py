"""Pretrained parameters: loaders per source, each giving params in mmjax's layout.

    export.py      config.init_from (an mmjax export folder) and config.frozen
    hf.py          a transformers folder (config.json + model.safetensors) -> encoder config + params
    bigvision.py   a big_vision ViT / SigLIP .npz -> encoder config + params
    preprocess.py  a checkpoint's image processor and tokenizer on raw inputs
    towers.py      config.model.<modality>.init_from: the architecture into the config, the
                   params onto the sharded state; Tower (a ready encoder) for mmjax.embed

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
from mmjax.pretrained.towers import configure as configure_towers  # noqa: F401
