"""What the train loop, mmjax.compile, mmjax.export and the benchmarks share.

    state.py   the TrainState, the optimizer, the batch layout and the sharded state shapes
    steps.py   the train step and the ahead-of-time compilation of train and eval steps
    balance.py modality balancing (config.fusion.balance): OGM-GE, gradient blending
"""

from mmjax.trainer import balance
from mmjax.trainer.state import TrainState, batch_shapes, make_optimizer, sharded_state_shapes
from mmjax.trainer.steps import as_user_error, compile_eval_step, compile_train_step, make_train_step

__all__ = [
    "balance", "TrainState", "batch_shapes", "make_optimizer", "sharded_state_shapes",
    "as_user_error", "compile_eval_step", "compile_train_step", "make_train_step",
]
