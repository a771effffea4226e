"""The seed model: the small Keras CNN/LSTM model this project started from, in mmjax.

    python -m mmjax.train --config=configs/seed.py --workdir=runs/seed

    image  uint8 16x16x3 -> Conv2D(32, 3x3, relu) -> MaxPool(2x2) -> Flatten      (7*7*32 = 1,568)
    text   32 byte tokens -> Embedding(258, 64) -> LSTM(64), final state             (64)
    audio  log-mel [16 frames, 32 mels, 1] -> Conv2D(32, 3x3, relu) -> MaxPool(2x2)
           -> Flatten                                                                (7*15*32 = 3,360)
    concatenate (4,992) -> Dense(num_classes), softmax cross-entropy; Adam, lr 1e-3

Parameters for these shapes and the synthetic task's 10 classes: 100,682
(image conv 896; embedding 16,512; LSTM 33,024; audio conv 320; dense 49,930), the
counts Keras' layer formulas give (checked in tests/test_seed_config.py). Unlike the
Keras original, the LSTM skips padding tokens and padded audio frames are masked.

Everything else is configs/base.py, so every --config.key=value works here too. The
optimizer is plain Adam (optim.kind='adam') at a constant lr of 1e-3 with Keras' defaults
(beta 0.9 / 0.999, epsilon 1e-7): no warmup, decay, weight decay or clipping. On a 2-core CPU the run takes about 1.5 minutes (~1,250
examples/s) and ends at eval/accuracy 0.54 on the default synthetic task: the label needs
the text to pick between image and audio, which one linear layer over concatenated
features cannot do (its limit is 0.55). On the redundant variant
(--config.data.synthetic.task=redundant), where each modality alone gives the label,
it learns the task.
"""

import importlib.util
import os


def _base_config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "base.py")
    spec = importlib.util.spec_from_file_location("_mmjax_base_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(arg=None):
    del arg  # seed.py takes no argument
    c = _base_config()
    # Keras' Adam defaults: a constant lr of 1e-3, beta 0.9 / 0.999, epsilon 1e-7.
    c.optim.update(dict(kind="adam", lr=1e-3, b1=0.9, b2=0.999, eps=1e-7, warmup_steps=0))
    c.model.head_norm = False  # a bare Dense on the concatenation
    c.model.image.update(dict(kind="cnn", channels=(32,), kernel=3, pool=2))
    c.model.text.update(dict(kind="lstm", width=64, vocab_size=258, return_sequences=False))
    c.model.audio.update(dict(kind="cnn", channels=(32,), kernel=3, pool=2))
    c.fusion.update(dict(kind="concat", pool="flatten", depth=0))
    # The audio front end of the model described above (base.py now defaults to the
    # issue-17 small-data front end: per-utterance normalisation, SpecAugment, conv stem).
    c.model.audio.update(dict(stem=0, normalize="fixed", spec_time_masks=0, spec_freq_masks=0))
    return c
