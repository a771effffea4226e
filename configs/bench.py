"""The reference workload of the performance work (BUILD.md, "Performance"): the model
that is also written in plain PyTorch in bench/torch_baseline.py, shape for shape.

    python bench/train_step.py --config=configs/bench.py          # mmjax vs PyTorch eager
    python -m mmjax.train --config=configs/bench.py --workdir=runs/bench

- image 64x64x3 in 8x8 patches (64 tokens) -> Dense 192->256 + learned positions;
- text 32 tokens, vocabulary 8192 -> embedding 256 (a row lookup) + learned positions;
- audio 1 s at 16 kHz -> 64-bin log-mel x 64 frames (hop 250, window 512) -> 8x8
  patches (64 tokens) -> Dense 64->256 + learned positions;
- 2 pre-LN transformer layers per modality (d=256, 4 heads, MLP 1024, GELU), no final
  LayerNorm in the encoders, no modality embeddings;
- a joint fusion core of 4 such layers over CLS + all 160 tokens, final LayerNorm, then a
  bare linear head to 10 classes; AdamW, global batch 32, float32.

10,105,098 parameters and 4.95 GFLOPs per training example (mmjax/flops.py). On the
2-core CPU machine of BUILD.md, shared with other jobs, a step took 3-5 s (expect about
1 s on a quiet machine); the 300-step training run on the synthetic task (2,048
examples) is there to show the metrics (train/mfu, train/data_wait_fraction), not to
reach an accuracy.
"""

import os

from mmjax import config as config_lib


def get_config(arg=None):
    del arg
    c = config_lib.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "base.py"))
    c.batch_size = 32
    c.total_steps = 300
    c.log_every = 20
    c.eval_every = 300
    c.checkpoint_every = 300
    c.optim.warmup_steps = 20

    c.data.image_size = 64
    c.data.audio_rate = 16000
    c.data.audio_samples = 16000
    c.data.text_length = 32
    c.data.synthetic.update(dict(num_train=2048, num_eval=256))

    layer = dict(width=256, heads=4, mlp=1024, final_norm=False)
    c.model.dtype = "float32"
    c.model.head_norm = False  # the fusion core's final LayerNorm is the head's
    c.model.image.update(dict(kind="vit", patch=8, depth=2, **layer))
    c.model.text.update(dict(kind="transformer", vocab_size=8192, lookup="gather", depth=2, **layer))
    c.model.audio.update(dict(kind="transformer", n_mels=64, window=512, hop=250,
                              patch_time=8, patch_freq=8, depth=2, **layer))
    c.fusion.update(dict(kind="joint", depth=4, modality_embed=False, **{**layer, "final_norm": True}))
    # The audio front end of the model described above (base.py now defaults to the
    # issue-17 small-data front end: per-utterance normalisation, SpecAugment, conv stem).
    c.model.audio.update(dict(stem=0, normalize="fixed", spec_time_masks=0, spec_freq_masks=0))
    return c
