"""The training engine: device policy, the Trainer, checkpoints, metrics, and run_experiment.

``lab run``, the queue and the console all go through :func:`run_experiment`;
the pieces are importable on their own for scripts and tests.
"""

from lm.train.experiment import run_experiment  # noqa: F401
from lm.train.policy import DevicePolicy, resolve_policy  # noqa: F401
from lm.train.state import TrainState  # noqa: F401
from lm.train.trainer import Trainer  # noqa: F401
