"""Every config key: its default, allowed values, check and a one-line doc.

`SCHEMA` mirrors configs/base.py key for key (base.py returns `defaults()`). `validate`
is derived from it: a key's type is its default's type, `choices` lists the allowed
values (every element's, for a tuple), `check(value)` returns what is wrong or None, and
the cross-key checks at the end relate keys to each other. Errors are one
`UserError("config.<key>: ...")` naming the first bad key.

`config.evals` is the one group whose entry names are the user's: each entry is an
evaluator whose keys depend on its `kind` (EVAL_KINDS).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from mmjax.contract import (BALANCE, CHUNKED, CONTRASTIVE, CONTRASTIVE_HEADS, CONTRASTIVE_POOLS, DTYPES, MODALITIES,
                            OGM_TASKS, OPTIMIZERS, REMAT_POLICIES, TASKS)


class UserError(Exception):
    """An error the user caused and can fix; printed as one line, no traceback."""


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key. check(value) returns a message saying what is wrong, or None."""

    default: Any
    doc: str
    choices: tuple = ()
    check: Callable[[Any], str | None] | None = None


@dataclasses.dataclass(frozen=True)
class Group:
    """A section of the config (a nested ConfigDict)."""

    doc: str
    keys: Mapping[str, Any]  # name -> Key or Group


# ---------------------------------------------------------------- checks
def positive(value) -> str | None:
    return None if value > 0 else f"must be > 0, got {value!r}"


def positive_int(value) -> str | None:
    return None if value > 0 else f"must be a positive integer, got {value!r}"


def finite_positive(value) -> str | None:
    return positive(value) if math.isfinite(value) else f"must be a finite number > 0, got {value!r}"


def strings(value) -> str | None:
    bad = [v for v in value if not isinstance(v, str) or not v]
    return f"entries must be non-empty strings, got {bad[0]!r} in {tuple(value)!r}" if bad else None


def profile_window(value) -> str | None:
    if not value:
        return None
    if (len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
            or not 0 <= value[0] < value[1]):
        return f"must be () (off) or (start, stop) with 0 <= start < stop, got {tuple(value)!r}"
    return None


def at_least_zero(value) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value!r}"


def fraction(value) -> str | None:
    return None if 0.0 <= value < 1.0 else f"must be in [0, 1), got {value!r}"


def unit_interval(value) -> str | None:
    return None if 0.0 <= value <= 1.0 else f"must be in [0, 1], got {value!r}"


def mesh_axis(value) -> str | None:
    return None if value == -1 or value >= 1 else f"must be -1 (fill) or >= 1, got {value!r}"


def positive_ints(value) -> str | None:
    if not value or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value):
        return f"must be a non-empty tuple of positive ints, got {tuple(value)!r}"
    return None


def distinct_modalities(value) -> str | None:
    if not value:
        return "needs at least one of " + ", ".join(MODALITIES)
    if len(set(value)) != len(value):
        return f"{tuple(value)} lists a modality twice"
    return None


def pair_list(value) -> str | None:
    for pair in value:
        ok = isinstance(pair, (tuple, list)) and len(pair) in (2, 3) and all(m in MODALITIES for m in pair[:2])
        if not ok or pair[0] == pair[1] or (len(pair) == 3 and not (
                isinstance(pair[2], (int, float)) and not isinstance(pair[2], bool) and pair[2] > 0)):
            return (f"entry {pair!r} must be (a, b) or (a, b, weight > 0) with two different modalities of "
                    f"{', '.join(MODALITIES)}, e.g. --config.loss.contrastive_pairs=\"(('image','text'),('audio','text'))\"")
    names = [frozenset(p[:2]) for p in value]
    if len(set(names)) != len(names):
        return f"{tuple(value)!r} lists a pair twice"
    return None


def contrastive_pairs(loss) -> tuple[tuple[str, str, float], ...]:
    """The pairs of the contrastive loss config.loss asks for, as (a, b, weight): every
    entry of contrastive_pairs, or the one contrastive_pair when that is empty; () when
    loss.contrastive is 'none'. The one place that reads either key."""
    if loss.contrastive == "none":
        return ()
    pairs = tuple(loss.contrastive_pairs) or (tuple(loss.contrastive_pair),)
    return tuple((str(p[0]), str(p[1]), float(p[2]) if len(p) > 2 else 1.0) for p in pairs)


def contrastive_modalities(loss) -> tuple[str, ...]:
    """The modalities of contrastive_pairs(loss), in order of first appearance."""
    return tuple(dict.fromkeys(m for a, b, _ in contrastive_pairs(loss) for m in (a, b)))


def one_of(choices: tuple) -> Callable[[Any], str | None]:
    return lambda value: None if value in choices else f"{value!r} is not one of {', '.join(choices)}"


# config.select_best: 'min:NAME' / 'max:NAME', or a bare NAME whose direction follows from it.
SELECT_MODES = ("max", "min")
LOWER_IS_BETTER = ("loss", "mse", "mae")  # a bare name whose last part contains one is minimised


def parse_select_best(value: str) -> tuple[str, str, str | None]:
    """(mode, metric name, what is wrong or None) of a config.select_best value ('' -> ('', '', None))."""
    mode, colon, name = value.partition(":")
    if not colon:
        mode, name = "", value
    if not name.strip():
        return "", "", None if not value else f"{value!r} names no metric; e.g. 'eval/accuracy' or 'min:eval/loss'"
    if colon and mode not in SELECT_MODES:
        return "", "", f"{value!r}: the direction before ':' must be 'max' or 'min'"
    if not mode:
        last = name.rsplit("/", 1)[-1]
        mode = "min" if any(word in last for word in LOWER_IS_BETTER) else "max"
    return mode, name, None


# The model tables (mmjax/models) hold the classes behind these names; a test keeps them equal.
IMAGE_KINDS = ("vit", "cnn")
TEXT_KINDS = ("transformer", "lstm")
AUDIO_KINDS = ("transformer", "cnn", "whisper")
AUDIO_NORMALIZE = ("fixed", "utterance", "utterance_bins")  # models/audio.py normalise()
FUSION_KINDS = ("joint", "concat", "bottleneck", "cross")
CONCAT_POOLS = ("mean", "flatten")
TEXT_LOOKUPS = ("one_hot", "gather")
ATTENTION_KINDS = ("auto", "dpa", "einsum")
UNROLL_CHOICES = ("auto", "yes", "no")
SYNTHETIC_TASKS = ("default", "redundant", "multilabel", "regression", "paired", "describe")
DECODER_KINDS = ("prefix", "cross")  # models/decoder.py DECODERS
LORA_TARGETS = ("q", "k", "v", "o", "mlp")  # models/layers.py LORA_LAYERS
LORA_KINDS = {"image": ("vit",), "text": ("transformer",), "audio": ("transformer", "whisper")}  # kinds with adapters


def _encoder(width: str) -> dict[str, Key]:
    """The transformer and conv-stage keys every encoder section shares."""
    return dict(
        width=Key(64, f"transformer width of the {width}", check=positive_int),
        depth=Key(2, "transformer layers", check=positive_int),
        heads=Key(4, "attention heads (divide width)", check=positive_int),
        mlp=Key(128, "hidden units of each MLP block", check=positive_int),
        final_norm=Key(True, "LayerNorm after the stack"),
    )


# Transformer-tower options: the defaults are mmjax's own towers; a pretrained checkpoint
# (init_from) sets them from its own config (mmjax/pretrained/towers.py).
NORM_PLACEMENTS = ("pre", "post")
ACTIVATIONS = ("gelu_tanh", "gelu", "quick_gelu", "relu")
POOLINGS = ("none", "cls", "index", "last", "mean", "map")
POOL_DENSES = ("", "tanh", "linear")
TEXT_MASKS = ("pad", "eos", "none")


def _stack_options() -> dict[str, Key]:
    """How each block of a transformer stack is built (modality towers and the fusion core)."""
    return dict(
        norm=Key("pre", "LayerNorm placement: 'pre' (x + f(LN(x))) or 'post' (LN(x + f(x)), BERT)",
                 choices=NORM_PLACEMENTS),
        ln_eps=Key(1e-6, "LayerNorm epsilon of the stack (checkpoints: 1e-12 BERT/ViT, 1e-5 CLIP/Whisper)",
                   check=positive),
        activation=Key("gelu_tanh", "MLP nonlinearity", choices=ACTIVATIONS),
        attn_bias=Key(True, "biases on the attention's q/k/v/out projections"),
        causal=Key(False, "causal self-attention (CLIP's text tower)"),
    )


def _tower() -> dict[str, Key]:
    return dict(
        **_stack_options(),
        init_from=Key("", "pretrained tower: 'hf:DIR' (a transformers folder) or 'bv:FILE.npz' (big_vision); "
                          "its architecture overrides these keys"),
        lora_rank=Key(0, "LoRA adapters of this rank on the transformer's lora_targets (0: none; "
                         "trained even when config.frozen holds the tower)", check=at_least_zero),
        lora_alpha=Key(16.0, "LoRA scale numerator: an adapter adds (lora_alpha / lora_rank) * x A B", check=positive),
        lora_targets=Key(("q", "v"), "projections that get adapters: q, k, v, o (attention) and mlp (fc1, fc2)",
                         choices=LORA_TARGETS),
    )


def _pooling() -> dict[str, Key]:
    return dict(
        pooling=Key("none", "tokens -> one vector: 'cls', 'index' (text: the first eos_id), 'last', 'mean', "
                            "'map' (SigLIP's attention-pooling head) or 'none'", choices=POOLINGS),
        pool_norm=Key(False, "LayerNorm on the pooled vector"),
        pool_dense=Key("", "dense after pooling: 'tanh' (BERT/ViT pooler), 'linear' (SigLIP text head) or ''",
                       choices=POOL_DENSES),
        pool_features=Key(0, "width of pool_dense (0: the tower's width)", check=at_least_zero),
    )


_CNN = dict(
    channels=Key((32,), "cnn: one Conv(channels[i], kernel, relu) + MaxPool(pool) stage per entry",
                 check=positive_ints),
    kernel=Key(3, "cnn: convolution kernel size", check=positive_int),
    pool=Key(2, "cnn: max-pool size", check=positive_int),
)

# ---------------------------------------------------------------- evaluators
def modality_pairs(value) -> str | None:
    """A tuple of (a, b) pairs of different modalities."""
    for pair in value:
        if not (isinstance(pair, tuple) and len(pair) == 2 and pair[0] != pair[1]
                and all(m in MODALITIES for m in pair)):
            return f"each pair must be two different modalities of {', '.join(MODALITIES)}, got {pair!r}"
    return None


# Keys every evaluator has, then each kind's own. data '' is config.data.eval; every 0 is
# config.eval_every; prefix '' is 'eval/<name>/'.
EVAL_KEYS = dict(
    kind=Key("task", "'task': the objective's metrics; 'without_modality': the task metrics with "
                     "modalities absent; 'retrieval', 'zeroshot', 'linear_probe': of the contrastive or "
                     "pooled embeddings; 'generate': decoded text against target_text (loss.task 'generate')",
               choices=("task", "without_modality", "retrieval", "zeroshot", "linear_probe", "generate")),
    data=Key("", "eval data: '' (config.data.eval), 'synthetic', a built directory or 'tfds:NAME'"),
    every=Key(0, "run every this many steps (0: config.eval_every) and at the end", check=at_least_zero),
    prefix=Key("", "metric-name prefix ('': 'eval/<name>/')"),
)
EVAL_KINDS: dict[str, dict[str, Key]] = {
    "task": {},  # the objective's metrics (loss, accuracy, ...)
    "without_modality": dict(  # the task metrics with these modalities absent for every example
        modalities=Key(("audio",), "modalities masked out for every example", choices=MODALITIES),
    ),
    "retrieval": dict(  # recall@k over the whole data set, both directions of each pair
        pairs=Key((), "modality pairs, e.g. (('image','text'),) (empty: config.loss's contrastive pair or pairs)",
                  check=modality_pairs),
        ks=Key((1, 5, 10), "the k of each reported recall@k", check=lambda v: None if v and min(v) > 0 else
               f"must be positive integers, got {v!r}"),
    ),
    "zeroshot": dict(  # classification by similarity to the class names' prompt embeddings
        modality=Key("image", "the modality classified against the text embeddings of the prompts",
                     choices=MODALITIES),
        prompts=Key(("a photo of a {}.",), "prompt templates; {} is a class name; embeddings averaged over them",
                    check=lambda v: None if v and all("{}" in p for p in v) else
                    f"must be templates with {{}} for the class name, got {v!r}"),
        classes=Key((), "class names in label order (empty: the data set's spec.json class_names)"),
    ),
    "linear_probe": dict(  # ridge regression on frozen features of train_data, accuracy on data
        train_data=Key("", "the split the probe is fitted on ('': config.data.train; 'synthetic' is its train split)"),
        features=Key("fused", "'fused' (the fusion core's pooled output, the head's input) or 'contrastive' "
                              "(the contrastive embeddings, concatenated)", choices=("fused", "contrastive")),
        l2=Key(1e-3, "ridge penalty (times the number of fitting examples)", check=positive),
        max_train_examples=Key(0, "fit on at most this many examples of train_data (0: all)", check=at_least_zero),
    ),
    # exact_match, token_accuracy (teacher-forced), wer, bleu of config.decode's output; settings: config.decode
    "generate": {},
}
DEFAULT_EVALS = {"eval": dict(kind="task", prefix="eval/")}


def evaluator(kind: str = "task", **values) -> ml_collections.ConfigDict:
    """An evaluator entry of `kind` with its defaults, updated by `values`."""
    if kind not in EVAL_KINDS:
        raise UserError(f"config.evals: kind {kind!r} is not one of {', '.join(EVAL_KINDS)}")
    entry = {name: key.default for name, key in {**EVAL_KEYS, **EVAL_KINDS[kind]}.items()}
    entry.update(values, kind=kind)
    return ml_collections.ConfigDict(entry)


# ---------------------------------------------------------------- the schema
SCHEMA = Group("the run", dict(
    modalities=Key(("image", "text", "audio"), "modalities the model uses (the data may offer fewer)",
                   choices=MODALITIES, check=distinct_modalities),
    seed=Key(0, "seed of parameter init, dropout and data order"),
    total_steps=Key(1500, "optimizer steps of the run", check=positive_int),
    batch_size=Key(64, "global batch size, over all hosts and devices", check=positive_int),
    grad_accum_steps=Key(1, "split each global batch into this many micro-batches, one gradient (contrastive "
                            "losses keep every negative: GradCache); changes only the dropout draws", check=positive_int),
    log_every=Key(50, "steps between progress lines / metric rows", check=positive_int),
    eval_every=Key(500, "steps between evaluations (and at the end)", check=positive_int),
    checkpoint_every=Key(500, "steps between checkpoints (and at the end)", check=positive_int),
    keep_checkpoints=Key(3, "checkpoints kept in WORKDIR/checkpoints", check=positive_int),
    checkpoint_every_seconds=Key(0.0, "also save when this much time passed since the last save (0: off)",
                                 check=at_least_zero),
    select_best=Key("", "metric whose best evaluation is kept beside the latest checkpoints (and exported): "
                        "'eval/accuracy', 'min:eval/loss', 'max:NAME' ('': off; no min:/max: -> minimise "
                        "names with loss/mse/mae, else maximise)", check=lambda v: parse_select_best(v)[2]),
    early_stop_patience=Key(0, "stop when select_best has not improved for this many evaluations (0: never)",
                            check=at_least_zero),
    max_bad_steps=Key(10, "stop after this many consecutive steps with a non-finite loss/gradient",
                      check=positive_int),
    mesh=Group("device mesh: size per axis, -1 takes the remaining devices; the batch is split over "
               "data x fsdp, parameters over fsdp, attention heads and MLP over tensor", dict(
        data=Key(-1, "data-parallel axis", check=mesh_axis),
        fsdp=Key(1, "fully sharded data-parallel axis (parameters sharded too)", check=mesh_axis),
        tensor=Key(1, "tensor-parallel axis (heads, MLP)", check=mesh_axis),
    )),
    optim=Group("optimizer", dict(
        kind=Key("adamw", "'adamw': warmup + cosine decay, weight decay, clipping; 'adam': plain Adam at "
                          "a constant lr (warmup_steps, weight_decay, grad_clip do not apply)", choices=OPTIMIZERS),
        lr=Key(1e-3, "peak learning rate", check=finite_positive),
        warmup_steps=Key(100, "adamw: linear warmup steps, in [0, total_steps)", check=at_least_zero),
        weight_decay=Key(1e-4, "adamw: decoupled weight decay on >= 2-D parameters", check=at_least_zero),
        grad_clip=Key(1.0, "adamw: global-norm clipping threshold", check=positive),
        b1=Key(0.9, "Adam beta1", check=fraction),
        b2=Key(0.999, "Adam beta2", check=fraction),
        eps=Key(1e-8, "Adam epsilon", check=positive),
    )),
    data=Group("input data", dict(
        train=Key("synthetic", "'synthetic', a directory made by python -m mmjax.data.build, or 'tfds:NAME'"),
        eval=Key("synthetic", "like data.train; the default evaluator's data"),
        cache_dir=Key("", "where the synthetic data is written ('': $MMJAX_CACHE or ~/.cache/mmjax)"),
        workers=Key(0, "grain worker processes (0: decode in the training process)", check=at_least_zero),
        prefetch=Key(2, "batches prepared and placed on the devices ahead of the step (0: none)",
                     check=at_least_zero),
        image_size=Key(16, "image height and width in pixels", check=positive_int),
        audio_rate=Key(8000, "audio sample rate in Hz", check=positive_int),
        audio_samples=Key(2048, "audio samples per example (padded or cut)", check=positive_int),
        text_length=Key(32, "text tokens per example (padded or cut)", check=positive_int),
        target_length=Key(32, "loss.task 'generate': target_tokens per example, BOS and EOS included (padded or "
                              "cut; the data set's spec says what its longest target needs)",
                          check=lambda v: None if v >= 2 else f"must be >= 2 (BOS and EOS), got {v!r}"),
        tokenizer=Key("bytes", "'bytes' (UTF-8 bytes + 2, no files), a SentencePiece .model file (ids + 2) or "
                               "'hf:DIR' (that checkpoint's own tokenizer, real ids; the default of a text tower "
                               "with init_from=hf:DIR)"),
        image_processor=Key("", "how images were resized: '' (mmjax's centred square, bilinear) or 'hf:DIR' (that "
                                "checkpoint's image processor; the default of an image tower with init_from=hf:DIR); "
                                "must match the data's build (--image_from)"),
        tfds=Group("TFDS sources ('tfds:NAME', ArrayRecord format)", dict(
            data_dir=Key("", "TFDS data directory ('': TFDS's default)"),
            train_split=Key("train", "split read for data.train"),
            eval_split=Key("test", "split read for data.eval"),
            features=Key("", "mmjax name -> the data set's feature, e.g. 'image=img,label=digit' "
                             "('target_text=caption': a Text feature as loss.task 'generate''s target)"),
            audio_rate=Key(0, "sample rate of a Tensor audio feature (0: already data.audio_rate)",
                           check=at_least_zero),
        )),
        # The ranges are checked where they are used (mmjax/data/augment.py).
        augment=Group("train-time augmentation (never in eval), all off by default; see mmjax/data/augment.py",
                      dict(
            image_crop=Key(0.0, "> 0: random resized crop keeping at least this fraction of the area"),
            image_flip=Key(False, "horizontal flip with probability 1/2"),
            audio_speed=Key(0.0, "speed perturbation: resample to play at a rate uniform in 1 +- this (tempo "
                                 "and pitch together), in [0, 1)"),
            audio_gain_db=Key(0.0, "random gain, uniform in +- this many dB"),
            audio_shift=Key(0.0, "random time shift of up to this many seconds"),
            audio_time_mask=Key(0.0, "SpecAugment time mask: up to this fraction of the clip"),
            audio_freq_mask=Key(0.0, "SpecAugment frequency mask: up to this fraction of the mel scale"),
            text_dropout=Key(0.0, "each token replaced by the reserved id with this probability"),
        )),
        synthetic=Group("the embedded synthetic task (mmjax/data/synthetic.py)", dict(
            num_train=Key(20000, "training examples", check=positive_int),
            num_eval=Key(2000, "eval examples", check=positive_int),
            seed=Key(0, "seed of the generated examples"),
            task=Key("default", "'default' (needs all three modalities), 'redundant' (each alone decides), "
                                "'multilabel' or 'regression' (use the matching loss.task), 'paired' (an instance "
                                "code shared by the modalities: contrastive retrieval), 'describe' (a target "
                                "text naming the digit and the note: loss.task 'generate')", choices=SYNTHETIC_TASKS),
        )),
    )),
    model=Group("the model", dict(
        dtype=Key("auto", "compute dtype ('auto': bfloat16 on TPU/GPU, float32 on CPU); parameters stay float32",
                  choices=DTYPES),
        remat=Key("none", "per-block rematerialisation: none | full | dots (keep matmul outputs)",
                  choices=REMAT_POLICIES),
        scan=Key(True, "layer stacks as one nn.scan (parameters stacked on a 'layers' axis)"),
        unroll=Key("auto", "scanned stacks unrolled ('auto': yes on CPU, where it is faster)",
                   choices=UNROLL_CHOICES),
        attention=Key("auto", "'dpa' (fused on GPU/TPU), 'einsum' (faster on CPU), 'auto' (by platform)",
                      choices=ATTENTION_KINDS),
        dropout=Key(0.0, "dropout rate in every block", check=fraction),
        head_norm=Key(True, "LayerNorm before the head's Dense"),
        image=Group("image encoder", dict(
            kind=Key("vit", "'vit' (patches -> transformer) or 'cnn' (conv stages)", choices=IMAGE_KINDS),
            patch=Key(4, "vit: patch size (divides data.image_size)", check=positive_int),
            **_encoder("image encoder"), **_CNN, **_tower(), **_pooling(),
            cls_token=Key(False, "vit: a learned class token ahead of the patches (ViT, CLIP)"),
            pre_norm=Key(False, "vit: LayerNorm before the stack (CLIP)"),
            pixel_mean=Key((), "vit: () maps pixels to x / 127.5 - 1; else (x / 255 - mean) / pixel_std"),
            pixel_std=Key((), "vit: per-channel std with pixel_mean (a checkpoint's image processor)"),
        )),
        text=Group("text encoder", dict(
            kind=Key("transformer", "'transformer' or 'lstm'", choices=TEXT_KINDS),
            vocab_size=Key(384, "token embedding rows (>= the tokenizer's ids; bytes need 258)", check=positive_int),
            return_sequences=Key(False, "lstm: every state as a token (else the final state only)"),
            **_encoder("text encoder"),
            lookup=Key("one_hot", "token ids -> vectors: 'one_hot' (matmul, splits over tensor) or 'gather'",
                       choices=TEXT_LOOKUPS),
            **_tower(), **_pooling(),
            type_vocab=Key(0, "token-type embeddings (BERT: 2; batch key 'text_type', default 0)",
                           check=at_least_zero),
            embed_norm=Key(False, "LayerNorm on the summed embeddings (BERT)"),
            max_positions=Key(0, "rows of the position table (0: data.text_length)", check=at_least_zero),
            pad_id=Key(0, "the padding id (mask='pad')", check=at_least_zero),
            mask=Key("pad", "which tokens are real: 'pad' (id != pad_id), 'eos' (up to the first eos_id), 'none'",
                     choices=TEXT_MASKS),
            eos_id=Key(-1, "the end-of-text id (mask='eos', pooling='index'; -1: none)"),
        )),
        audio=Group("audio encoder: waveform -> log-mel on device -> transformer over patches or cnn", dict(
            kind=Key("transformer", "'transformer', 'cnn' or 'whisper' (Whisper's front end and encoder)",
                     choices=AUDIO_KINDS),
            n_mels=Key(32, "mel bins", check=positive_int),
            window=Key(256, "STFT window in samples", check=positive_int),
            hop=Key(128, "STFT hop in samples", check=positive_int),
            patch_time=Key(2, "transformer: frames per patch", check=positive_int),
            patch_freq=Key(8, "transformer: mel bins per patch (divides n_mels)", check=positive_int),
            **_encoder("audio encoder"), **_CNN, **_tower(),
            normalize=Key("fixed", "log-mel normalisation: 'fixed' (one global shift and scale), 'utterance' "
                                   "(each clip's per-bin mean, overall std) or 'utterance_bins' (per-bin mean and "
                                   "std); over each clip's valid frames", choices=AUDIO_NORMALIZE),
            spec_time_masks=Key(0, "SpecAugment (training only): time masks per clip", check=at_least_zero),
            spec_time_width=Key(0.15, "SpecAugment: a time mask covers up to this fraction of the clip",
                                check=unit_interval),
            spec_freq_masks=Key(0, "SpecAugment: frequency masks per clip", check=at_least_zero),
            spec_freq_width=Key(0.15, "SpecAugment: a frequency mask covers up to this fraction of the bins",
                                check=unit_interval),
            stem=Key(0, "transformer: stride-2 Conv1D layers over time instead of patches (0: patches; at most 4)",
                     check=lambda v: None if 0 <= v <= 4 else f"must be in 0..4, got {v!r}"),
            stem_norm=Key(False, "transformer with stem: LayerNorm over the channels after each stem convolution"),
            stem_deltas=Key(False, "transformer with stem: the log-mel's first-order deltas as extra input channels"),
            chunk=Key(0, "whisper: samples each waveform is padded or cut to (0: data.audio_samples)",
                      check=at_least_zero),
            max_positions=Key(0, "whisper: rows of the position table (0: chunk / hop / 2)", check=at_least_zero),
        )),
    )),
    fusion=Group("fusion core", dict(
        kind=Key("joint", "'joint' (early), 'concat' (late), 'bottleneck' (MBT) or 'cross' (Perceiver)",
                 choices=FUSION_KINDS),
        **{**_encoder("fusion core"), "depth": Key(2, "transformer layers (concat: Dense layers)",
                                                    check=at_least_zero)},
        **_stack_options(),
        pool=Key("mean", "concat: 'mean' or 'flatten' each modality's tokens", choices=CONCAT_POOLS),
        fusion_layer=Key(0, "bottleneck: layer from which the modalities share bottleneck tokens",
                         check=at_least_zero),
        num_bottlenecks=Key(4, "bottleneck: shared bottleneck tokens", check=positive_int),
        num_latents=Key(8, "cross: latent tokens", check=positive_int),
        modality_embed=Key(True, "joint: add a learned per-modality embedding to its tokens"),
        aux_weight=Key(0.0, "> 0: a classifier head per modality on its pooled encoder output, its task loss "
                            "times this added to the fused loss (train/accuracy_<m>, eval/accuracy_<m>_only)",
                       check=at_least_zero),
        balance=Key("none", "modality balancing (needs aux_weight > 0): 'ogm_ge' (scale a leading encoder's "
                            "gradients) or 'gradient_blending' (loss weights per head from G/O^2 at each eval)",
                    choices=BALANCE),
        ogm_alpha=Key(0.5, "ogm_ge: a leading encoder's gradients times 1 - tanh(ogm_alpha * (ratio - 1))",
                      check=positive),
        ogm_noise=Key(True, "ogm_ge: add Gaussian noise with the gradient's std to the scaled gradients (GE)"),
    )),
    decoder=Group("loss.task 'generate': the text decoder after the encoders (mmjax/models/decoder.py)", dict(
        kind=Key("prefix", "'prefix' (prefix-LM: the encoders' tokens with full attention, then the target "
                           "causally) or 'cross' (a causal decoder cross-attending to the encoders' tokens)",
                 choices=DECODER_KINDS),
        width=Key(64, "decoder width", check=positive_int),
        depth=Key(2, "decoder layers", check=positive_int),
        heads=Key(4, "attention heads (divide width)", check=positive_int),
        mlp=Key(128, "hidden units of each MLP block", check=positive_int),
        dropout=Key(0.0, "dropout rate in the decoder's blocks", check=fraction),
    )),
    decode=Group("how the 'generate' evaluator (and an export) decodes (mmjax/decoding.py)", dict(
        beam_size=Key(1, "beams (1: greedy, or sampling with temperature > 0)", check=positive_int),
        max_length=Key(0, "generated tokens at most, EOS included (0: data.target_length - 1)",
                       check=at_least_zero),
        temperature=Key(0.0, "beam_size 1: 0 takes the argmax, > 0 samples from softmax(logits / temperature)",
                        check=at_least_zero),
        top_k=Key(0, "sampling: only the k most likely tokens (0: all)", check=at_least_zero),
        length_penalty=Key(0.0, "beam search: rank finished beams by log-prob / length ** this (0: raw sum)",
                           check=at_least_zero),
        seed=Key(0, "sampling: seed of the draws"),
    )),
    modality_dropout=Key(0.0, "drop whole modalities per training example with this probability (never all)",
                         check=fraction),
    eval_without=Key((), "shorthand: also report eval/<metric>_without_<m> for each modality m",
                     choices=MODALITIES),
    evals=Group("named evaluators (the names are yours; --config.evals.NAME.kind=KIND adds one)",
                {}),  # entries are the user's: see EVAL_KEYS, EVAL_KINDS and DEFAULT_EVALS
    init_from=Key("", "an export folder whose parameters replace the fresh ones at step 0 (never on resume)"),
    init_from_prefix=Key("", "load only this parameter sub-tree of init_from, e.g. 'image' ('': all)"),
    frozen=Key((), "parameter-path prefixes, e.g. ('image',), that never change and get no optimizer state",
               check=strings),
    loss=Group("objective", dict(
        task=Key("classification", "task loss; the data must be labelled for it ('none': contrastive only)",
                 choices=TASKS),
        contrastive=Key("none", "contrastive loss between the pooled embeddings of contrastive_pair: "
                                "'sigmoid' (SigLIP) or 'softmax' (CLIP)", choices=CONTRASTIVE),
        contrastive_pair=Key(("image", "audio"), "the two modalities of the contrastive loss (one pair; "
                                                 "contrastive_pairs, when set, lists every pair)", choices=MODALITIES),
        contrastive_pairs=Key((), "every contrastive pair, each (a, b) or (a, b, weight), e.g. "
                                  "(('image','text'),('audio','text',0.5)); an example lacking a or b drops out "
                                  "of that pair's loss ((): the one contrastive_pair)", check=pair_list),
        contrastive_chunked=Key("auto", "'yes': the ring-chunked loss (mmjax/contrastive.py), no device holds "
                                        "B x B logits; 'no': dense logits; 'auto': chunked when the mesh splits "
                                        "the batch over > 1 device", choices=CHUNKED),
        contrastive_weight=Key(1.0, "weight of the contrastive loss", check=positive),
        contrastive_dim=Key(64, "contrastive embedding size (not used by contrastive_head 'siglip')",
                            check=positive_int),
        contrastive_pool=Key("mean", "contrastive_head 'mmjax': how each modality's tokens become one vector: "
                                     "'mean' (masked mean) or 'map' (a learned attention probe, as SigLIP's "
                                     "vision head: it can keep where in the sequence things are)",
                             choices=CONTRASTIVE_POOLS),
        contrastive_head=Key("mmjax", "'mmjax': each encoder's masked-mean tokens -> LayerNorm -> Dense(contrastive_dim), "
                                      "temperature capped at 100; 'clip': the tower's pooled output -> Dense without "
                                      "bias; 'siglip': the tower's pooled output itself (a CLIP / SigLIP checkpoint "
                                      "loaded into both towers sets it)", choices=CONTRASTIVE_HEADS),
    )),
    peak_tflops=Key(0.0, "per-device peak TFLOP/s for train/mfu (0: looked up in mmjax/hardware.py)",
                    check=at_least_zero),
    # Operations of mmjax.train (resume checks, compilation cache, W&B, profiler): mmjax/train.py.
    allow_resume_change=Key(False, "resume even if batch_size, seed or the training data differ from the "
                                   "checkpoint's (the data order then does not continue where it stopped)"),
    compile_cache=Key("auto", "persistent XLA compilation cache: 'auto' ($MMJAX_CACHE/compile, else "
                              "WORKDIR/compile_cache), 'off' (or ''), or a directory"),
    profile_steps=Key((), "(start, stop): a jax.profiler trace of the steps after step start up to step "
                          "stop in WORKDIR/profile (TensorBoard's profile plugin reads it); (): off",
                      check=profile_window),
    wandb=Group("Weights & Biases writer (pip install 'mmjax[wandb]'); off unless project is set", dict(
        project=Key("", "W&B project ('': no W&B writer)"),
        entity=Key("", "W&B entity (team or user; '': your default)"),
        name=Key("", "run name ('': the workdir's name)"),
        mode=Key("online", "'online', 'offline' (sync later with `wandb sync`) or 'disabled'",
                 choices=("online", "offline", "disabled")),
    )),
))


# ---------------------------------------------------------------- defaults
def _defaults(group: Group) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict()
    for name, item in group.keys.items():
        out[name] = _defaults(item) if isinstance(item, Group) else item.default
    return out


def defaults() -> ml_collections.ConfigDict:
    """The default run (configs/base.py): every key at its default; not locked."""
    config = _defaults(SCHEMA)
    config.evals = ml_collections.ConfigDict({name: evaluator(**values) for name, values in DEFAULT_EVALS.items()})
    return config


def complete_evals(config) -> None:
    """Fills each config.evals entry's missing keys with its kind's defaults."""
    for name, entry in list(config.evals.items()):
        values = entry.to_dict() if isinstance(entry, ml_collections.ConfigDict) else dict(entry)
        config.evals[name] = evaluator(**values) if values.get("kind", "task") in EVAL_KINDS else entry


# ---------------------------------------------------------------- validation
def _fail(key: str, message: str):
    raise UserError(f"config.{key}: {message}")


def _type_ok(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, tuple):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))


def check_key(dotted: str, key: Key, value) -> None:
    """Raises UserError unless `value` is valid for `key` (named `dotted`)."""
    if not _type_ok(value, key.default):
        _fail(dotted, f"must be {type(key.default).__name__}, got {value!r}")
    if key.choices:
        for v in value if isinstance(key.default, tuple) else (value,):
            if v not in key.choices:
                _fail(dotted, f"{v!r} is not one of {', '.join(key.choices)}")
    message = key.check(value) if key.check else None
    if message:
        _fail(dotted, message)


def _check_group(config, group: Group, prefix: str) -> None:
    if not isinstance(config, ml_collections.ConfigDict):
        _fail(prefix.rstrip(".") or "config", f"must be a group of keys, got {config!r}")
    unknown = sorted(set(config.keys()) - set(group.keys))
    if unknown:
        _fail(f"{prefix}{unknown[0]}", f"unknown key; valid keys: {', '.join(sorted(group.keys))}")
    for name, item in group.keys.items():
        if name not in config:
            _fail(f"{prefix}{name}", "missing (start the config from configs/base.py or mmjax.config.defaults())")
        if name == "evals" and not prefix:
            _check_evals(config.evals)
        elif isinstance(item, Group):
            _check_group(config[name], item, f"{prefix}{name}.")
        else:
            check_key(f"{prefix}{name}", item, config[name])


def _check_evals(evals) -> None:
    for name, entry in evals.items():
        if not isinstance(entry, ml_collections.ConfigDict) or "kind" not in entry:
            _fail(f"evals.{name}", "must be an evaluator entry with a kind, e.g. mmjax.config.evaluator('task')")
        check_key(f"evals.{name}.kind", EVAL_KEYS["kind"], entry.kind)
        _check_group(entry, Group("", {**EVAL_KEYS, **EVAL_KINDS[entry.kind]}), f"evals.{name}.")


def check_modalities_fit(config) -> None:
    """The keys that name modalities must name configured ones. Also called after the data
    narrowed config.modalities (mmjax/models/multimodal.py), hence its own function."""
    mods = tuple(config.modalities)
    loss = config.loss
    if loss.contrastive != "none":
        key = "loss.contrastive_pairs" if loss.contrastive_pairs else "loss.contrastive_pair"
        pair = tuple(loss.contrastive_pair)
        if not loss.contrastive_pairs and (len(pair) != 2 or pair[0] == pair[1]):
            _fail(key, f"{pair} must name two different modalities of config.modalities {mods}")
        for a, b, _ in contrastive_pairs(loss):
            if not {a, b} <= set(mods):
                _fail(key, f"{(a, b)} must name two different modalities of config.modalities {mods}")
        default = SCHEMA.keys["loss"].keys["contrastive_pair"].default
        if loss.contrastive_pairs and pair != default and frozenset(pair) not in {
                frozenset(p[:2]) for p in loss.contrastive_pairs}:
            _fail("loss.contrastive_pair", f"{pair} is not among config.loss.contrastive_pairs, which replaces it; "
                                           "list the pair there (or set contrastive_pairs=())")
    for key, names in [("eval_without", config.eval_without)] + [
            (f"evals.{n}.modalities", e.modalities) for n, e in config.evals.items() if e.kind == "without_modality"]:
        unknown = sorted(set(names) - set(mods))
        if unknown:
            _fail(key, f"{tuple(names)} names {unknown}, which are not in config.modalities {mods}")


def _check_across_keys(config) -> None:
    """Checks that relate keys to each other."""
    if list(config.mesh.values()).count(-1) > 1:
        _fail("mesh", "at most one axis may be -1")
    if config.batch_size % config.grad_accum_steps:
        _fail("grad_accum_steps", f"{config.grad_accum_steps} must divide config.batch_size={config.batch_size} "
                                  "into equal micro-batches")
    if not config.optim.warmup_steps < config.total_steps:
        _fail("optim.warmup_steps", f"must be in [0, total_steps={config.total_steps}), got {config.optim.warmup_steps}")
    for key in ("train", "eval"):
        if not config.data[key]:
            _fail(f"data.{key}", "is empty; use 'synthetic' or a data directory")
    if config.loss.task == "none":
        if config.loss.contrastive == "none":
            _fail("loss.task", "'none' with config.loss.contrastive 'none' leaves nothing to train")
        if config.eval_without or any(e.kind == "without_modality" for e in config.evals.values()):
            _fail("eval_without", "needs a task loss (config.loss.task is 'none')")
    if config.loss.contrastive_pool != "mean" and config.loss.contrastive_head != "mmjax":
        _fail("loss.contrastive_pool", f"{config.loss.contrastive_pool!r} is for contrastive_head 'mmjax'; the "
              f"{config.loss.contrastive_head!r} head reads the towers' own pooled outputs (set "
              "config.model.<m>.pooling instead)")
    _check_balance(config)
    _check_generate(config)
    for m in config.modalities:
        tower = config.model[m]
        if tower.lora_rank > 0:
            if tower.kind not in LORA_KINDS[m]:
                _fail(f"model.{m}.lora_rank", f"adapters need a transformer tower (kind {' or '.join(LORA_KINDS[m])}), "
                      f"not kind={tower.kind!r}")
            if not tower.lora_targets:
                _fail(f"model.{m}.lora_targets", "is empty but lora_rank > 0; name at least one projection")
    if config.early_stop_patience and not config.select_best:
        _fail("early_stop_patience", "needs config.select_best, the metric whose evaluations decide when to stop, "
              "e.g. --config.select_best=eval/accuracy")
    check_modalities_fit(config)


def _check_generate(config) -> None:
    """The decoder's keys fit together; 'generate' evaluators need the 'generate' task."""
    d, generating = config.decoder, config.loss.task == "generate"
    if d.width % d.heads:
        _fail("decoder.heads", f"{d.heads} must divide config.decoder.width={d.width}")
    if config.decode.max_length > config.data.target_length - 1:
        _fail("decode.max_length", f"{config.decode.max_length} is more than the decoder's "
                                   f"config.data.target_length - 1 = {config.data.target_length - 1} positions")
    if config.decode.beam_size > 1 and config.decode.temperature > 0:
        _fail("decode.temperature", "samples with beam_size 1 only; set --config.decode.beam_size=1 or temperature 0")
    for name, entry in config.evals.items():
        if entry.kind == "generate" and not generating:
            _fail(f"evals.{name}.kind", f"'generate' decodes text, which needs --config.loss.task=generate "
                                        f"(it is {config.loss.task!r})")
    if generating and config.fusion.aux_weight > 0:
        _fail("fusion.aux_weight", "per-modality heads classify; loss.task 'generate' has no classes (set it to 0)")


def _check_balance(config) -> None:
    """The per-modality heads need a task; balancing needs the heads (and its own inputs)."""
    f, task = config.fusion, config.loss.task
    if f.aux_weight > 0 and task == "none":
        _fail("fusion.aux_weight", "per-modality heads need a task loss (config.loss.task is 'none')")
    if f.balance == "none":
        return
    if f.aux_weight <= 0:
        _fail("fusion.balance", f"{f.balance!r} reads the per-modality heads: set config.fusion.aux_weight > 0 "
                                "(e.g. 1.0)")
    if len(config.modalities) < 2:
        _fail("fusion.balance", f"{f.balance!r} balances two or more modalities; config.modalities is "
                                f"{tuple(config.modalities)}")
    if f.balance == "ogm_ge" and task not in OGM_TASKS:
        _fail("fusion.balance", f"'ogm_ge' scores each head by its probability of the true target, which "
                                f"config.loss.task={task!r} has not; use {' or '.join(OGM_TASKS)}, or "
                                "'gradient_blending'")
    if f.balance == "gradient_blending" and not any(
            e.kind == "task" and e.prefix == "eval/" for e in config.evals.values()):
        _fail("fusion.balance", "'gradient_blending' re-estimates its weights from the 'task' evaluator with "
                                "prefix 'eval/' (the default config.evals.eval); add one")


def validate(config) -> None:
    """Checks every key against the schema; raises UserError naming the first bad key."""
    _check_group(config, SCHEMA, "")
    _check_across_keys(config)
