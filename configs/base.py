"""The default run: a small image + text + audio transformer on the embedded synthetic task.

    python -m mmjax.train --config=configs/base.py --workdir=runs/base

On a 2-core CPU laptop it takes about 3 minutes, including data generation and
compilation, and reaches eval/accuracy 0.999 (303k parameters, ~570 examples/s) with the
old audio front end; with today's (issue 17: per-utterance normalisation, SpecAugment,
conv stem; 319k parameters) 0.987, measured in 14 min on a heavily shared machine.
Leaving a modality out (`--config.modalities="('image','text')"`) ends near 0.53,
because the synthetic task needs all three (see mmjax/data/synthetic.py).
The other fusion cores (`--config.fusion.kind=concat|bottleneck|cross`), encoders,
missing-modality options and objectives are in BUILD.md, "Models".
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
    c.checkpoint_every_seconds = 0.0  # also save when this much time passed since the last save; 0: off
    c.max_bad_steps = 10  # stop after this many consecutive steps with a non-finite loss/gradient

    # Device mesh: sizes per axis; -1 takes the remaining devices. The batch is split over
    # data x fsdp, parameters over fsdp, attention heads and MLP over tensor.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    # Optimizer: kind 'adamw' (warmup + cosine decay of lr, weight_decay on >= 2-D params,
    # global-norm clipping at grad_clip) or 'adam' (plain Adam at a constant lr, as Keras'
    # Adam; warmup_steps, weight_decay and grad_clip do not apply). eps: Adam's epsilon.
    c.optim = ml_collections.ConfigDict(
        dict(kind="adamw", lr=1e-3, warmup_steps=100, weight_decay=1e-4, grad_clip=1.0, b1=0.9, b2=0.999,
             eps=1e-8)
    )

    c.data = ml_collections.ConfigDict()
    # 'synthetic', a directory made by `python -m mmjax.data.build`, or 'tfds:NAME' (see c.data.tfds)
    c.data.train = "synthetic"
    c.data.eval = "synthetic"
    c.data.cache_dir = ""  # '' -> $MMJAX_CACHE or ~/.cache/mmjax
    c.data.workers = 0  # grain worker processes; 0 decodes in the training process
    c.data.prefetch = 2  # batches prepared and placed on the devices ahead of the step (0: none)
    c.data.image_size = 16
    c.data.audio_rate = 8000
    c.data.audio_samples = 2048
    c.data.text_length = 32
    c.data.tokenizer = "bytes"  # 'bytes' (UTF-8 bytes, no files) or a SentencePiece .model file
    # TFDS sources ('tfds:NAME', ArrayRecord format): features maps mmjax names to the data
    # set's, e.g. 'image=img,label=digit' (unmapped names map to themselves); audio_rate is
    # the rate of a Tensor audio feature (0: already data.audio_rate).
    c.data.tfds = ml_collections.ConfigDict(
        dict(data_dir="", train_split="train", eval_split="test", features="", audio_rate=0)
    )
    # Train-time augmentation (never in eval), all off by default; see mmjax/data/augment.py.
    c.data.augment = ml_collections.ConfigDict(
        dict(image_crop=0.0, image_flip=False, audio_gain_db=0.0, audio_shift=0.0,
             audio_time_mask=0.0, audio_freq_mask=0.0, text_dropout=0.0)
    )
    # task: 'default' (the label needs all three modalities), 'redundant' (each alone decides
    # it), 'multilabel' (labels {digit, note, class the text names}; use loss.task='multilabel')
    # or 'regression' (target: the tone's pitch in [0, 1]; use loss.task='regression').
    c.data.synthetic = ml_collections.ConfigDict(dict(num_train=20000, num_eval=2000, seed=0, task="default"))

    encoder = dict(width=64, depth=2, heads=4, mlp=128, final_norm=True)  # final_norm: LayerNorm after the stack
    c.model = ml_collections.ConfigDict()
    c.model.dtype = "auto"  # compute dtype: float32 | bfloat16 | auto (bfloat16 on TPU/GPU); parameters stay float32
    c.model.remat = "none"  # none | full | dots
    c.model.scan = True  # layer stacks as one nn.scan (parameters stacked on a 'layers' axis)
    c.model.unroll = "auto"  # scanned stacks unrolled: 'yes' | 'no' | 'auto' (yes on CPU, where it is faster)
    c.model.attention = "auto"  # 'dpa' (fused on GPU/TPU) | 'einsum' (faster on CPU) | 'auto' (by platform)
    c.model.dropout = 0.0
    c.model.head_norm = True  # LayerNorm before the head's Dense
    # Encoders: image 'vit' | 'cnn'; text 'transformer' | 'lstm'; audio 'transformer' | 'cnn'.
    # cnn: one Conv(channels[i], kernel, relu) + MaxPool(pool) stage per entry of channels.
    cnn = dict(channels=(32,), kernel=3, pool=2)
    c.model.image = ml_collections.ConfigDict(dict(kind="vit", patch=4, **encoder, **cnn))
    c.model.text = ml_collections.ConfigDict(
        dict(kind="transformer", vocab_size=384, return_sequences=False, **encoder)  # return_sequences: lstm only
    )
    c.model.text.lookup = "one_hot"  # token ids -> vectors: 'one_hot' (matmul, splits over tensor) | 'gather'
    c.model.audio = ml_collections.ConfigDict(
        dict(kind="transformer", n_mels=32, window=256, hop=128, patch_time=2, patch_freq=8, **encoder, **cnn)
    )
    # Audio front end (issue 17; both audio encoders, see mmjax/models/audio.py):
    # normalize 'fixed' (one global shift/scale) | 'utterance' (each clip's per-bin mean and
    # overall std over its valid frames) | 'utterance_bins' (per-bin mean and std, CMVN);
    # spec_*: SpecAugment on the log-mel, training only: that many time masks of up to
    # spec_time_width of the clip and frequency masks of up to spec_freq_width of the bins.
    # stem (transformer only): Conv1D stride-2 layers over time instead of patches (0: patches).
    # Defaults chosen on the digits with a held-out speaker (BUILD.md, "Fusion on real data").
    c.model.audio.update(dict(normalize="utterance_bins", spec_time_masks=2, spec_time_width=0.15,
                              spec_freq_masks=2, spec_freq_width=0.15, stem=2))
    # Fusion: 'concat' (pool: 'mean' | 'flatten', then depth Dense(mlp) layers), 'joint',
    # 'bottleneck' (MBT; bottlenecks from layer fusion_layer on) or 'cross' (num_latents).
    c.fusion = ml_collections.ConfigDict(
        dict(kind="joint", **encoder, pool="mean", fusion_layer=0, num_bottlenecks=4, num_latents=8)
    )
    c.fusion.modality_embed = True  # joint: add a learned per-modality embedding to its tokens

    # Missing modalities: drop whole modalities per training example with this
    # probability (never all of them); eval_without=('audio',) also reports
    # eval/accuracy_without_audio (the modality masked out for every example). Examples
    # that lack a modality in the data (built with --optional_modalities) are masked too.
    c.modality_dropout = 0.0
    c.eval_without = ()

    # Pretrained parts: init_from is an export folder (python -m mmjax.export) whose parameters
    # replace the fresh ones at step 0 (never when resuming); init_from_prefix loads only one
    # sub-tree, e.g. 'image' (the image encoder), '' = all. frozen: parameter-path prefixes,
    # e.g. ('image',), that never change and get no optimizer state. See mmjax/pretrained.py.
    c.init_from = ""
    c.init_from_prefix = ""
    c.frozen = ()

    # Objective: loss.task 'classification' | 'multilabel' | 'regression' | 'none' (the data
    # set must be labelled for it, spec.json 'tasks': 'label', 'labels' or 'target'), plus
    # loss.contrastive 'none' | 'sigmoid' (SigLIP) | 'softmax' (CLIP) between the pooled
    # embeddings of loss.contrastive_pair, weighted by loss.contrastive_weight.
    c.loss = ml_collections.ConfigDict(
        dict(task="classification", contrastive="none", contrastive_pair=("image", "audio"),
             contrastive_weight=1.0, contrastive_dim=64)
    )
    # Throughput accounting: per-device peak in TFLOP/s for train/mfu; 0 looks the device
    # up in mmjax/hardware.py (a CPU's peak is measured once and cached).
    c.peak_tflops = 0.0
    return c
