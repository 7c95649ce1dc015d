"""``keras-qrobust guard``: robust training, PTQ across bit widths, attacks, the choice
(Zhou 2022 Algorithm 1), export, re-measurement in the target runtime and the report, each
stage checkpointed so an interrupted run resumes. One job per module:

* :mod:`.config` — the arguments, checked and resolved (``--quick`` presets);
* :mod:`keras_qrobust.inputs` (shared with every subcommand) — reading and checking the model
  file and the dataset;
* :mod:`.state` — the checkpoint (``guard_state.json``) and the run log;
* :mod:`.training`, :mod:`.stages`, :mod:`.attacking`, :mod:`.reporting` — the stages;
* :mod:`.pipeline` — running them in order.
"""

from .config import GuardConfig, GuardInputError, TARGETS
from .pipeline import KILL_AFTER_ENV, STAGES, run

__all__ = ["GuardConfig", "GuardInputError", "TARGETS", "STAGES", "KILL_AFTER_ENV", "run"]
