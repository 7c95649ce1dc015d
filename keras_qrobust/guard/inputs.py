"""Deprecated: moved to :mod:`keras_qrobust.inputs` (every subcommand reads its inputs there)."""

import warnings

from ..inputs import (  # noqa: F401
    CHANCE_INPUTS,
    CHANCE_MARGIN,
    Data,
    InputError,
    check_above_chance,
    check_data_fits,
    check_model_output,
    fingerprint,
    load_data,
    load_model_file,
)

__all__ = ["Data", "load_model_file", "load_data", "check_data_fits", "check_model_output", "check_above_chance",
           "fingerprint"]

warnings.warn("keras_qrobust.guard.inputs is deprecated; import from keras_qrobust.inputs", DeprecationWarning,
              stacklevel=2)
