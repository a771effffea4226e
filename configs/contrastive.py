"""Contrastive training of image, audio and text towers on the paired synthetic task.

    python -m mmjax.train --config=configs/contrastive.py --workdir=runs/contrastive

Every example of data.synthetic.task='paired' carries a three-digit instance code that its
image draws, its audio plays as three notes and its text writes out ("code 7 3 1"; each code
once in the 1000-example eval split), so retrieving an example's partner needs every digit of it in
both modalities. The loss is the sigmoid (SigLIP) loss on all three pairs, image-text,
audio-text and image-audio (config.loss.contrastive_pairs), with no task loss; the
'retrieval' evaluator reports recall@1/5/10 over the whole eval set in both directions of
each pair (eval/retrieval/<a>_to_<b>/recall@<k>).

The towers are small and cheap: 24-pixel images in 8-pixel patches (a digit per column of
patches), 1536-sample clips in log-mel patches of 4 frames by all 32 mel bins (a token per
note), 12 byte tokens of text; the fusion core does nothing here (concat, depth 0: no task
head is trained).

Measured with helper closs's config.loss.contrastive_pairs merged in (the 2-core AMD EPYC,
loaded by other jobs, load average 17-19): 7 min 30 s wall for the 800 steps, recall@1 over
the 1000 eval examples 0.23-0.32 in all six directions, recall@10 ~1: the towers learn the
bag of digits fast and their order slowly. That is short of the issue's 0.9; BUILD.md,
"Contrastive evaluation", has the figures and what to try next.

Without config.loss.contrastive_pairs (a checkout before that key), `configs/contrastive.py:one_pair`
trains image-text alone through config.loss.contrastive_pair.
"""

from configs import base
from mmjax import config as config_lib


def get_config(arg=None):
    c = base.get_config()
    c.modalities = ("image", "text", "audio")
    # 24 px in 8-px patches: each digit's slot is one column of patches. 1536 samples at hop 128
    # are 12 frames; 4-frame patches over all 32 mel bins: one token per note. 'code 7 3 1' fits 12.
    c.data.update(dict(image_size=24, audio_samples=1536, text_length=12))
    c.data.synthetic.update(dict(task="paired", num_train=20000, num_eval=1000))
    c.model.image.patch = 8
    c.model.audio.update(dict(patch_time=4, patch_freq=32))
    c.fusion.update(dict(kind="concat", depth=0))  # no task head to feed: the fusion core does nothing
    c.loss.update(dict(task="none", contrastive="sigmoid"))
    if arg == "one_pair":
        c.modalities = ("image", "text")
        c.loss.contrastive_pair = ("image", "text")
    else:
        c.loss.contrastive_pairs = (("image", "text"), ("audio", "text"), ("image", "audio"))
    c.batch_size = 256
    c.total_steps = 800
    c.optim.update(dict(lr=3e-3, warmup_steps=50))
    c.eval_every = 200
    c.checkpoint_every = 400
    c.log_every = 50
    c.evals.retrieval = config_lib.evaluator("retrieval")
    c.evals.eval.every = c.total_steps  # the objective's own metrics (in-batch recall) once, at the end
    return c
