"""The default run: a small image + text + audio transformer on the embedded synthetic task.

    python -m mmjax.train --config=configs/base.py --workdir=runs/base

On a 2-core CPU laptop it takes about 3 minutes, including data generation and
compilation, and reaches eval/accuracy 0.999 (303k parameters, ~570 examples/s).
Leaving a modality out (`--config.modalities="('image','text')"`) ends near 0.53,
because the synthetic task needs all three (see mmjax/data/synthetic.py).
"""

import ml_collections


def get_config(arg=None):
    del arg  # base.py takes no argument
    c = ml_collections.ConfigDict()
    c.modalities = ("image", "text", "audio")
    c.seed = 0
    c.total_steps = 1500
    c.batch_size = 64  # global, over all hosts and devices
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
    c.keep_checkpoints = 3

    # Device mesh: sizes per axis; -1 takes the remaining devices. The batch is split over
    # data x fsdp, parameters over fsdp, attention heads and MLP over tensor.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    c.optim = ml_collections.ConfigDict(
        dict(lr=1e-3, warmup_steps=100, weight_decay=1e-4, grad_clip=1.0, b1=0.9, b2=0.999)
    )

    c.data = ml_collections.ConfigDict()
    c.data.train = "synthetic"  # 'synthetic' or a directory made by mmjax.data.build
    c.data.eval = "synthetic"
    c.data.cache_dir = ""  # '' -> $MMJAX_CACHE or ~/.cache/mmjax
    c.data.workers = 0  # grain worker processes; 0 decodes in the training process
    c.data.image_size = 16
    c.data.audio_rate = 8000
    c.data.audio_samples = 2048
    c.data.text_length = 32
    c.data.synthetic = ml_collections.ConfigDict(dict(num_train=20000, num_eval=2000, seed=0))

    encoder = dict(width=64, depth=2, heads=4, mlp=128)
    c.model = ml_collections.ConfigDict()
    c.model.dtype = "float32"  # compute dtype; parameters stay float32
    c.model.remat = "none"  # none | full | dots
    c.model.scan = True
    c.model.dropout = 0.0
    c.model.image = ml_collections.ConfigDict(dict(kind="vit", patch=4, **encoder))
    c.model.text = ml_collections.ConfigDict(dict(kind="transformer", vocab_size=384, **encoder))
    c.model.audio = ml_collections.ConfigDict(
        dict(kind="transformer", n_mels=32, window=256, hop=128, patch_time=2, patch_freq=8, **encoder)
    )
    c.fusion = ml_collections.ConfigDict(dict(kind="joint", **encoder))
    return c
