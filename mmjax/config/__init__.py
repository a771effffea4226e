"""The run's configuration: the schema of every key (schema.py), loading config files and
command-line overrides with help (cli.py), and upgrading an older run's config (upgrade.py).

    from mmjax import config as config_lib
    config = config_lib.load_config_file("configs/base.py")
    config_lib.apply_overrides(config, {"total_steps": "300"})
    config_lib.validate(config)
"""

from mmjax.config.cli import apply_overrides, load_config_file, split_config_args
from mmjax.config.schema import UserError, contrastive_modalities, contrastive_pairs, defaults, evaluator, validate
from mmjax.config.upgrade import upgrade

__all__ = ["UserError", "apply_overrides", "contrastive_modalities", "contrastive_pairs", "defaults", "evaluator",
           "load_config_file", "split_config_args", "upgrade", "validate"]
