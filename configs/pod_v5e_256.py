"""A 1.3-billion-parameter image + text + audio model for a v5e-256 pod slice (16x16 chips).

    python -m mmjax.compile --config=configs/pod_v5e_256.py --topology=v5e:16x16   # fit check on a CPU
    launch/tpu_pod.sh --name=mm256 --accelerator=v5litepod-256 -- --config=configs/pod_v5e_256.py \
        --workdir=gs://BUCKET/runs/pod256 --config.data.train=gs://BUCKET/data/train --config.data.eval=gs://BUCKET/data/eval

Encoders of 12 layers at width 1024 per modality (ViT-L/16-like on 224x224 images, byte-level
text of 128 tokens, 10 s of 16 kHz audio as 128-bin log-mel patches) and a 16-layer fusion
core at width 2048 over all 829 tokens. Parameters are sharded over fsdp=64 and attention
heads / MLP over tensor=4; compute in bfloat16 with float32 parameters, remat of every block
keeping only the matmul outputs. `mmjax.compile` reports its per-chip memory and FLOPs; the
figures are in BUILD.md ("Running on a TPU pod").
"""

import os

from mmjax import config as config_lib


def get_config(arg=None):
    del arg
    c = config_lib.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "base.py"))
    c.total_steps = 100_000
    c.batch_size = 512
    c.log_every = 100
    c.eval_every = 5000
    c.checkpoint_every = 2000
    c.mesh.update(data=-1, fsdp=64, tensor=4)
    c.optim.update(lr=3e-4, warmup_steps=2000, weight_decay=0.05)

    c.data.image_size = 224
    c.data.text_length = 128
    c.data.audio_rate = 16000
    c.data.audio_samples = 160_000
    c.data.workers = 8

    c.model.dtype = "bfloat16"
    c.model.remat = "dots"
    c.model.scan = True
    encoder = dict(width=1024, depth=12, heads=16, mlp=4096)
    c.model.image.update(patch=16, **encoder)
    c.model.text.update(**encoder)
    c.model.audio.update(n_mels=128, window=400, hop=160, patch_time=16, patch_freq=16, **encoder)
    c.fusion.update(width=2048, depth=16, heads=16, mlp=8192)
    # The audio front end of the model described above (base.py now defaults to the
    # issue-17 small-data front end: per-utterance normalisation, SpecAugment, conv stem).
    c.model.audio.update(dict(stem=0, normalize="fixed", spec_time_masks=0, spec_freq_masks=0))
    return c
