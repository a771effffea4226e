"""The default run: a small image + text + audio transformer on the embedded synthetic task.

    python -m mmjax.train --config=configs/base.py --workdir=runs/base

On a 2-core CPU laptop it takes about 3 minutes, including data generation and
compilation, and reaches eval/accuracy 0.999 (303k parameters, ~570 examples/s).
Leaving a modality out (`--config.modalities="('image','text')"`) ends near 0.53,
because the synthetic task needs all three (see mmjax/data/synthetic.py).
The other fusion cores (`--config.fusion.kind=concat|bottleneck|cross`), encoders,
missing-modality options and objectives are in BUILD.md, "Models".

Every key, its default and a one-line doc are in mmjax/config/schema.py
(`python -m mmjax.train --help_config` lists them); this file is those defaults.
"""

from mmjax import config as config_lib


def get_config(arg=None):
    del arg  # base.py takes no argument
    return config_lib.defaults()
