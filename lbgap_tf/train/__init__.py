"""Small-batch (SB) and large-batch (LB) training of one network, as in Keskar et al. 2017.

How a run works: a frozen ``TrainConfig`` (``resolve``d against the training set and replica
count: dataset and GLOBAL batch size) is trained by ``train`` in a run directory. One training
loop serves every tf.distribute strategy (default, one device, mirrored, multi-worker, TPU):
each step's update is the gradient of the mean loss over the whole global batch, each replica
taking its own slice, so N replicas follow the trajectory of one device (up to float
reassociation; dropout masks are the exception). Every epoch visits the in-memory training set
in an order drawn from ``(seed, epoch)`` alone, cut into full global batches. After every epoch
a history row and a checkpoint are written, so calling ``train`` again on the same directory
resumes after the last completed epoch and, in deterministic mode (seeds plus
``tf.config.experimental.enable_op_determinism``, a process-wide TensorFlow setting), ends with
the same weights as an uninterrupted run. The finished run is evaluated on the full training
and test sets and becomes one CSV row (``run_record``) under a deterministic ``run_id``.

Modules, each with one job:
  config      TrainConfig, TrainError, the paper's constants, ``resolve``, ``stop_reason``
  inputs      the (train, test) splits of a config and the example order of each epoch
  network     the Keras network of a run under its precision policy
  x0          initial weights: drawn from a seed, saved/loaded as x0.npz, digested
  optimizers  ADAM through the fused kernel, SGD, Adagrad; loss scaling for mixed_float16
  steps       the compiled multi-step training function under any strategy; its step rules
  remedies    the step remedies: conservative (proximal), adversarial (FGSM), SAM and ASAM
  schedules   the data and schedule remedies: batch growth, LR scaling and warm-up,
              augmentation (ghost batch normalization is a layer of ``models``)
  rundir      the run directory: file names, lock, same-run check, config.json, history
  loop        ``train``: build, restore, the epoch loop with progress, final evaluation
  records     the run's CSV row and id
"""

from lbgap_tf.train.config import (
    DIVERGED,
    LR_SCALINGS,
    OPTIMIZERS,
    PAPER_LB_FRACTION,
    PERFORMANCE_FIELDS,
    PRECISIONS,
    REGIMES,
    SB_BATCH_SIZE,
    STEP_REMEDIES,
    TrainConfig,
    TrainError,
    config_dict,
    defining_values,
    resolve,
    stop_reason,
)
from lbgap_tf.train.inputs import epoch_permutation, load_data
from lbgap_tf.train.loop import TrainResult, train
from lbgap_tf.train.optimizers import FusedAdam, make_optimizer
from lbgap_tf.train.records import RUN_COLUMNS, run_id, run_key, run_record
from lbgap_tf.train.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    HISTORY_COLUMNS,
    HISTORY_FILE,
    MODEL_FILE,
    SNAPSHOT_DIR,
    X0_FILE,
    is_chief,
    snapshot_path,
)
from lbgap_tf.train.x0 import load_x0, make_x0, save_x0

__all__ = [
    "CHECKPOINT_DIR", "CONFIG_FILE", "DIVERGED", "HISTORY_COLUMNS", "HISTORY_FILE",
    "LR_SCALINGS", "MODEL_FILE", "OPTIMIZERS", "PAPER_LB_FRACTION", "PERFORMANCE_FIELDS",
    "PRECISIONS", "REGIMES", "RUN_COLUMNS", "SB_BATCH_SIZE", "SNAPSHOT_DIR", "STEP_REMEDIES",
    "X0_FILE", "FusedAdam", "TrainConfig", "TrainError", "TrainResult", "config_dict",
    "defining_values", "epoch_permutation", "is_chief", "load_data", "load_x0",
    "make_optimizer", "make_x0", "resolve", "run_id", "run_key", "run_record", "save_x0",
    "snapshot_path", "stop_reason", "train",
]
