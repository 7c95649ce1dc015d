"""Checks of argument values and of the inputs they name, shared by the subcommands: each
raises :class:`~.errors.UsageError` (or ``InputError``) before any work."""

from __future__ import annotations

from ..guard.config import check_seed
from ..inputs import check_count
from .errors import UsageError
from .terminal import say

__all__ = ["positive", "executor_of", "check_eps_values", "attack_spec", "check_model_on", "load_test_split"]


def positive(value, name: str) -> None:
    """``value`` (``None``: not given) is at least 1 (:func:`keras_qrobust.inputs.check_count`)."""
    check_count(value, name)


def executor_of(args) -> tuple[str, str | None]:
    """``(executor, address)`` of ``--ray``, after checking Ray is installed."""
    if args.ray is None:
        return "local", None
    from ..executor import INSTALL_HINT

    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError(f"--ray needs Ray: {INSTALL_HINT}") from None
    return "ray", None if args.ray == "local" else args.ray


def check_eps_values(values: list[float], allow_zero: bool) -> list[float]:
    """``--eps``: L∞ budgets in [0, 1] (``allow_zero``) or (0, 1]."""
    from ..attacks.registry import check_budget

    interval = "[0, 1]" if allow_zero else "(0, 1]"
    if not values:
        raise UsageError(f"--eps is empty: give L∞ budgets in {interval} for inputs in [0, 1]")
    try:
        return [check_budget(e, allow_zero=allow_zero) for e in values]
    except ValueError:
        raise UsageError(f"--eps {values} is out of range: give L∞ budgets in {interval} for inputs in "
                         "[0, 1]") from None


def attack_spec(name: str):
    """The registered per-model attack (or suite) ``name``."""
    from ..attacks.registry import PER_MODEL_KINDS, get_attack

    try:
        return get_attack(name, *PER_MODEL_KINDS)
    except ValueError as error:
        raise UsageError(str(error)) from None


def check_model_on(model, data, args, argument: str = "--model") -> None:
    """``data`` fits ``model`` and ``model`` is above chance on it (unless ``--force``)."""
    from ..inputs import check_above_chance, check_data_fits

    check_data_fits(data, model)
    warning = check_above_chance(model, data, argument, force=args.force)
    if warning:
        say(f"warning: {warning} (--force)")


def load_test_split(args, model=None):
    """The first ``--test-samples`` test inputs of ``--dataset``, checked against ``model``."""
    from ..inputs import load_data

    check_seed(args.seed)
    positive(args.test_samples, "--test-samples")
    data = load_data(args.dataset, test_samples=args.test_samples)
    if model is not None:
        check_model_on(model, data, args)
    return data
