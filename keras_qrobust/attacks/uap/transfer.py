"""How a UAP is scored: :func:`fooling_rate` (against the model's own clean predictions) and
:func:`uap_transfer_matrix` (a UAP crafted on model i, accuracy of model j)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from ..._keras import keras, tf
from ..._tables import markdown_table, percent
from .._common import AttackModel, as_attack_model, check_count, check_eps, check_inputs, clip_key
from ._base import EVAL_BATCH, Clip, check_choice, check_models, fooling_rates, perturbed_labels, zero_perturbation
from .sgd import sgd_uap
from .universal import uap

__all__ = ["fooling_rate", "TransferMatrix", "uap_transfer_matrix", "METHODS"]

METHODS = ("uap", "sgd_uap")


# ----------------------------------------------------------------------------- fooling rate
def _check_perturbation(perturbation, attack_model: AttackModel) -> np.ndarray:
    """``v`` shaped like one input (or ``(1, *input)``), finite; returned as ``(1, *input)``."""
    v = np.asarray(perturbation, dtype=np.float32)
    expected = attack_model.input_shape
    shape = v.shape[1:] if v.ndim == len(expected) + 1 and v.shape[0] == 1 else v.shape
    if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
        raise ValueError(
            f"perturbation has shape {v.shape}; it must be shaped like one input of model "
            f"'{attack_model.model.name}': {expected}"
        )
    if not np.all(np.isfinite(v)):
        raise ValueError("perturbation contains NaN or infinite values")
    return v.reshape((1, *shape))


def fooling_rate(model, x, perturbation, *, clip: Clip = (0.0, 1.0), batch_size: int = EVAL_BATCH,
                 output: str = "auto") -> float:
    """Fraction of ``x`` whose predicted label changes when ``perturbation`` is added:
    ``mean_i [argmax f(clip(x_i + v)) ≠ argmax f(x_i)]`` (against the model's clean
    predictions, not the true labels).

    ``perturbation``: shaped like one input (or a :class:`UAPResult`).
    """
    attack_model = as_attack_model(model, output)
    x, _ = check_inputs(attack_model, x, None, clip)
    v = _check_perturbation(perturbation, attack_model)
    batch_size = check_count(batch_size, "batch_size")
    clip = clip_key(clip)
    clean = perturbed_labels(attack_model, x, zero_perturbation(attack_model), clip, batch_size)
    return fooling_rates([attack_model], x, tf.constant(v), [clean], clip, batch_size)[0]


# ----------------------------------------------------------------------------- transfer
@dataclass(frozen=True, eq=False)
class TransferMatrix:
    """UAPs crafted on each model and scored on every model.

    Attributes:
        names: model names, the order of rows (crafted on) and columns (evaluated on).
        accuracy: ``[i, j]`` accuracy of model j on ``clip(x_eval + v_i)``.
        clean_accuracy: ``[j]`` accuracy of model j on ``x_eval``.
        fooling_rate: ``[i, j]`` fraction of ``x_eval`` whose prediction by model j changes
            under ``v_i``.
        perturbations: name -> ``v_i`` (shaped like one input).
        eps: the budget.
        method: the crafting function (``"uap"`` or ``"sgd_uap"``).
    """

    names: list
    accuracy: np.ndarray
    clean_accuracy: np.ndarray
    fooling_rate: np.ndarray
    perturbations: dict = field(repr=False)
    eps: float
    method: str

    def to_dict(self, perturbations: bool = False) -> dict:
        """JSON-ready dict (plain lists and floats); the perturbations only on request."""
        data = {
            "names": list(self.names),
            "eps": float(self.eps),
            "method": self.method,
            "clean_accuracy": [float(a) for a in self.clean_accuracy],
            "accuracy": [[float(a) for a in row] for row in self.accuracy],
            "fooling_rate": [[float(a) for a in row] for row in self.fooling_rate],
        }
        if perturbations:
            data["perturbations"] = {n: np.asarray(v).tolist() for n, v in self.perturbations.items()}
        return data

    def to_json(self, perturbations: bool = False) -> str:
        return json.dumps(self.to_dict(perturbations))

    def to_markdown(self) -> str:
        """Accuracy (%) of each evaluated model (columns) under the UAP of each row."""
        headers = ["crafted on \\ evaluated on", *self.names]
        rows = [["clean", *(percent(a) for a in self.clean_accuracy)]]
        rows += [[name, *(percent(a) for a in row)] for name, row in zip(self.names, self.accuracy)]
        title = f"UAP transfer ({self.method}, eps={self.eps:g}): accuracy %"
        return f"{title}\n\n{markdown_table(headers, rows)}\n"


def _model_name(model) -> str:
    return model.model.name if isinstance(model, AttackModel) else str(getattr(model, "name", "model"))


def _model_names(models) -> tuple[list, list]:
    """``(names, models)`` from a dict or a list (list names: model names, made unique)."""
    if isinstance(models, Mapping):
        return [str(k) for k in models], list(models.values())
    models = [models] if isinstance(models, (keras.Model, AttackModel)) else list(models)
    names, seen = [], {}
    for model in models:
        base = _model_name(model)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names, models


def _score(models: list, x: np.ndarray, y: np.ndarray, v: tf.Tensor, clean: list, clip) -> tuple:
    """Accuracy and fooling rate of each model on ``clip(x + v)``."""
    preds = [perturbed_labels(am, x, v, clip, EVAL_BATCH) for am in models]
    return ([float(np.mean(p == y)) for p in preds],
            [float(np.mean(p != c)) for p, c in zip(preds, clean)])


def uap_transfer_matrix(models: Union[Mapping, Sequence], x_craft, x_eval, y_eval, *, eps: float,
                        method: str = "uap", seed: Optional[int] = None, verbose: int = 1,
                        clip: Clip = (0.0, 1.0), output: str = "auto", executor: str = "local",
                        address: Optional[str] = None, folder=None, trust: bool = False,
                        **kwargs) -> TransferMatrix:
    """Craft a UAP on each model (on ``x_craft``) and score every model under it (on ``x_eval``).

    ``accuracy[i, j]`` is the accuracy of model j on ``clip(x_eval + v_i)`` against
    ``y_eval``; ``fooling_rate[i, j]`` the fraction of ``x_eval`` whose model-j prediction
    changes; the diagonal is white-box, the rest transfer. ``models``: a dict name -> model,
    or a list (named by ``model.name``). ``method``: ``"uap"`` or ``"sgd_uap"``; ``kwargs``
    go to it (``norm``, ``step_size``, ``max_passes`` ...). Zhou 2022's indirect setting is
    ``x_craft`` = training data; the direct one is ``x_craft = x_eval``.

    Each row (one crafting model) is a task of :func:`keras_qrobust.executor.run_tasks`:
    ``executor="ray"`` (``address``: see there) crafts the rows in parallel, the models
    shipped as their saved bytes and loaded safely (``trust`` as in
    :func:`keras_qrobust.load_model`), with the local run's numbers; ``folder`` keeps each
    finished row so that a rerun crafts only the missing ones.
    """
    from ...executor import check_executor, fingerprint, run_tasks, ship_models

    names, raw = _model_names(models)
    attack_models = check_models(raw, output)
    method = check_choice(method, METHODS, "method")
    eps = check_eps(eps)
    check_executor(executor)
    x_craft, _ = check_inputs(attack_models[0], x_craft, None, clip)
    x_eval, y_eval = check_inputs(attack_models[0], x_eval, y_eval, clip, require_labels=True)
    json.dumps(kwargs)  # tasks and kept rows carry the attack's settings as data
    key = clip_key(clip)
    clean = [perturbed_labels(am, x_eval, zero_perturbation(am), key, EVAL_BATCH) for am in attack_models]
    keras_models = dict(zip(names, (am if executor == "local" else am.model for am in attack_models)))
    shared = {"models": ship_models(keras_models, executor), "names": names, "output": output, "trust": trust,
              "x_craft": x_craft, "x_eval": x_eval, "y_eval": y_eval, "clean": clean, "eps": eps,
              "method": method, "seed": seed, "clip": clip, "kwargs": kwargs,
              "verbose": verbose if executor == "local" else 0}
    same = fingerprint(*(am.model for am in attack_models), x_craft, x_eval, y_eval,
                       [names, method, eps, seed, clip, output, kwargs]) if folder is not None else ""
    rows = run_tasks(_transfer_row, {f"{name}|{same}": (name,) for name in names}, shared=shared,
                     executor=executor, address=address, folder=folder)
    rows = [rows[f"{name}|{same}"] for name in names]
    perturbations = {name: np.asarray(row["perturbation"], np.float32) for name, row in zip(names, rows)}
    clean_accuracy = np.array([np.mean(c == y_eval) for c in clean])
    return TransferMatrix(names, np.array([row["accuracy"] for row in rows]), clean_accuracy,
                          np.array([row["fooling_rate"] for row in rows]), perturbations, eps, method)


def _transfer_row(shared: dict, name: str) -> dict:
    """Row ``name`` of :func:`uap_transfer_matrix`: the UAP crafted on that model and every
    model's accuracy and fooling rate under it (JSON data, a task of ``run_tasks``)."""
    from ...executor import unship

    attack_models = [as_attack_model(unship(shared["models"][n], shared["trust"]), shared["output"])
                     for n in shared["names"]]
    craft = uap if shared["method"] == "uap" else sgd_uap
    result = craft(attack_models[shared["names"].index(name)], shared["x_craft"], eps=shared["eps"],
                   seed=shared["seed"], verbose=shared["verbose"], clip=shared["clip"], **shared["kwargs"])
    v = tf.constant(result.perturbation[None])
    accuracy, fooled = _score(attack_models, shared["x_eval"], shared["y_eval"], v, shared["clean"],
                              clip_key(shared["clip"]))
    return {"accuracy": accuracy, "fooling_rate": fooled, "perturbation": result.perturbation.tolist()}
