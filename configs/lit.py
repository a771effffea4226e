"""LiT ("locked-image tuning"): a frozen pretrained image tower, a trained text tower, the SigLIP loss.

    python -m mmjax.train --config=configs/lit.py --workdir=runs/lit \
      --config.data.train=data/pairs/train --config.data.eval=data/pairs/eval

trains on image-text pairs (a data set built by `python -m mmjax.data.build` from a manifest
of images and captions; see BUILD.md, "Data") starting from hf:google/siglip-base-patch16-224,
read from the huggingface_hub cache or downloaded where the machine is online. The argument
after the colon names another checkpoint, such as a local `save_pretrained` folder:

    python -m mmjax.train --config=configs/lit.py:hf:/models/siglip-base-patch16-224 --workdir=runs/lit ...
    python -m mmjax.train --config=configs/lit.py:bv:/models/siglip_b16_224.npz --workdir=runs/lit ...

Both towers start from that checkpoint (config.model.image.init_from and
config.model.text.init_from), so the contrastive head is the checkpoint's too (its logit
scale and bias; config.loss.contrastive_head='siglip'), and step 0 gives SigLIP's own
zero-shot scores. The image tower, its MAP pooling head included, is frozen
(config.frozen=('image',): no updates, no optimizer state); the text tower, the logit scale
and bias train with the sigmoid loss (config.loss.contrastive='sigmoid', no task loss). The
text tower can come from another checkpoint, e.g. LiT's original choice of a BERT:

    ... --config.model.text.init_from=hf:/models/bert-base-uncased

(the head is then mmjax's own, freshly initialised: each tower's mean-pooled tokens, LayerNorm
and a Dense to loss.contrastive_dim). Add --config.model.text.lora_rank=8 to tune the text
tower through LoRA adapters only (with --config.frozen="('image','text')"). The text must be
tokenized as the text checkpoint expects (config.data.tokenizer), and data.image_size (224
here) should be the checkpoint's: another size interpolates its position embeddings.

Not measured at this size here: SigLIP-base is 203M parameters, and loading its layout onto
an 8-device mesh of a 2-core CPU took about a minute (BUILD.md, "Pretrained towers");
tests/pretrained/test_lit.py runs three steps of this config on a tiny SigLIP checkpoint.
"""

from configs import base

CHECKPOINT = "hf:google/siglip-base-patch16-224"


def get_config(arg=None):
    spec = arg or CHECKPOINT
    c = base.get_config()
    c.modalities = ("image", "text")
    c.model.image.init_from = spec
    c.model.text.init_from = spec
    c.frozen = ("image",)
    c.loss.update(dict(task="none", contrastive="sigmoid", contrastive_pair=("image", "text")))
    c.data.update(dict(image_size=224, text_length=64))  # SigLIP-base: 224 px, 64 text positions
    # The text side starts pretrained: a fine-tuning learning rate, not a from-scratch one.
    c.optim.update(dict(lr=1e-4, warmup_steps=100, weight_decay=1e-4))
    return c
