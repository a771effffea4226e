"""The default run: a small image + text + audio transformer on the embedded synthetic task.

    python -m mmjax.train --config=configs/base.py --workdir=runs/base

On a 2-core CPU laptop it takes about 3 minutes, including data generation and
compilation, and reaches eval/accuracy 0.999 (303k parameters, ~570 examples/s).
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
    # Transformer-tower options (issue 12; the defaults are mmjax's own towers), per modality:
    for name in ("image", "text", "audio"):
        sub = c.model[name]
        sub.norm = "pre"  # LayerNorm placement: 'pre' (x + f(LN(x))) | 'post' (LN(x + f(x)), BERT)
        sub.ln_eps = 1e-6  # LayerNorm epsilon of the stack (checkpoints: 1e-12 BERT/ViT, 1e-5 CLIP/Whisper)
        sub.activation = "gelu_tanh"  # MLP nonlinearity: 'gelu_tanh' | 'gelu' (exact erf) | 'quick_gelu' | 'relu'
        sub.attn_bias = True  # biases on the attention's q/k/v/out projections
        sub.causal = False  # causal self-attention (CLIP's text tower)
        sub.init_from = ""  # pretrained tower: 'hf:DIR' (transformers folder) | 'bv:FILE.npz' (big_vision); see mmjax/pretrained
    # vit/text pooling of the tower's tokens into one vector: pooling 'none' | 'cls' | 'index' (text: the first
    # eos_id) | 'last' | 'mean' | 'map' (SigLIP's attention-pooling head); pool_norm: LayerNorm on it;
    # pool_dense: '' | 'tanh' (BERT/ViT pooler) | 'linear' (SigLIP text head), pool_features wide (0: width).
    for name in ("image", "text"):
        c.model[name].update(dict(pooling="none", pool_norm=False, pool_dense="", pool_features=0))
    c.model.image.cls_token = False  # vit: a learned class token ahead of the patches (ViT, CLIP)
    c.model.image.pre_norm = False  # vit: LayerNorm before the stack (CLIP)
    c.model.image.pixel_mean = ()  # vit: () -> x / 127.5 - 1; else 3 values: (x / 255 - mean) / pixel_std
    c.model.image.pixel_std = ()  # vit: per-channel std with pixel_mean (a checkpoint's image processor)
    c.model.text.type_vocab = 0  # transformer: token-type embeddings (BERT: 2; batch 'text_type', default 0)
    c.model.text.embed_norm = False  # transformer: LayerNorm on the summed embeddings (BERT)
    c.model.text.max_positions = 0  # transformer: rows of the position table (0: data.text_length)
    c.model.text.pad_id = 0  # transformer: the padding id (mask='pad')
    c.model.text.mask = "pad"  # transformer: real tokens: 'pad' (id != pad_id) | 'eos' (up to the first eos_id) | 'none'
    c.model.text.eos_id = -1  # transformer: the end-of-text id (mask='eos', pool='index')
    c.model.audio.chunk = 0  # whisper: samples each waveform is padded/cut to (0: data.audio_samples)
    c.model.audio.max_positions = 0  # whisper: rows of the position table (0: chunk / hop / 2)
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
