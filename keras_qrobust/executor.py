"""One execution interface for embarrassingly parallel grids: in this process, or on Ray.

``run_tasks(function, tasks, shared=..., executor="local" | "ray")`` calls
``function(shared, *args)`` for every ``key -> args`` of ``tasks`` and returns ``{key: result}``.
The same function runs on both paths, so a Ray run gives the local run's numbers:

* tasks receive data, not live objects: Keras models travel as the bytes of their ``.keras``
  file (:func:`model_to_bytes`), loaded in the worker with the safe loader
  (:func:`keras_qrobust.model_files.load_model`, no code from the file runs) and kept per
  process, so a worker loads each model once;
* ``shared`` (models, inputs, labels) goes to Ray's object store once, not with every task;
* a task's randomness comes from its arguments (the caller passes the seed it would use
  locally), never from the worker it lands on;
* on Ray a task reserves ``cpus_per_task`` CPUs and its worker's TensorFlow uses that many
  threads (TensorFlow would otherwise use every core of the node in every worker, so that
  workers on one node compete for the same cores);
* with ``folder``, each finished result is written atomically as JSON (``<sha256(key)>.json``,
  data only: nothing in the folder is executed), and a resumed run skips finished keys; on
  Ray a task whose worker dies is retried (``max_retries``) before the run fails.

Ray is an extra (``pip install 'keras-qrobust[ray]'``); ``executor="ray"`` without it raises
an ImportError naming that command. ``address``: ``None`` starts a new Ray instance on this
machine for the call (also when one runs already), ``"auto"`` or ``"host:6379"`` joins a running
cluster (see docs/cluster.md). When Ray is already initialized in the process, that instance
is used and left running.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from ._io import write_json

__all__ = ["run_tasks", "start_ray", "ship", "ship_models", "unship", "fingerprint", "model_to_bytes", "EXECUTORS",
           "INSTALL_HINT", "check_executor", "function_reference", "imported"]

EXECUTORS = ("local", "ray")
INSTALL_HINT = "pip install 'keras-qrobust[ray]'"
_LOADED: dict[str, Any] = {}  # model digest -> model, per process


def check_executor(executor: str) -> str:
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    return executor


def model_to_bytes(model) -> bytes:
    """The bytes of ``model`` saved as a ``.keras`` file (what a task receives)."""
    handle, name = tempfile.mkstemp(suffix=".keras")
    os.close(handle)
    try:
        model.save(name)
        return Path(name).read_bytes()
    finally:
        os.unlink(name)


def ship(model) -> tuple:
    """What a task receives for ``model``: ``(".keras", bytes)`` for a tf_keras model, ``(suffix,
    bytes)`` for an exported artifact (:func:`keras_qrobust.export.load`)."""
    if hasattr(model, "layers") and hasattr(model, "save"):
        return (".keras", model_to_bytes(model))
    path = getattr(model, "path", None)
    if path is not None and Path(path).is_file():
        return (Path(path).suffix.lower(), Path(path).read_bytes())
    raise TypeError(f"{type(model).__name__} cannot be sent to a worker: pass a tf_keras model or an artifact loaded "
                    "with keras_qrobust.export.load")


def ship_models(models: Mapping[str, Any], executor: str) -> dict:
    """``models`` as the tasks of ``executor`` receive them: as they are in this process, shipped
    (:func:`ship`) for Ray."""
    return dict(models) if check_executor(executor) == "local" else {name: ship(m) for name, m in models.items()}


def unship(payload, trust: bool = False):
    """The model a task was sent (:func:`ship`), loaded once per process; a live model as is."""
    if not isinstance(payload, tuple):
        return payload
    suffix, blob = payload
    return _load_once(blob, suffix, trust)


def imported(reference: tuple[str, str]) -> Callable:
    """The function a :func:`function_reference` names, imported in this process."""
    module, qualname = reference
    found = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def function_reference(function: Callable, what: str = "function") -> tuple[str, str]:
    """``(module, qualname)`` of a module-level ``function``, which a worker imports by name
    (functions are sent by reference, never pickled), or a one-line ValueError naming the fix."""
    module, qualname = getattr(function, "__module__", None), getattr(function, "__qualname__", "")
    try:
        found = imported((module, qualname)) if module and module != "__main__" and "<" not in qualname else None
    except (ImportError, AttributeError):
        found = None
    if found is not function:
        raise ValueError(f"{what} {qualname or type(function).__name__} cannot be sent to Ray workers or named in a "
                         "folder's keys: pass a registry name (e.g. 'pgd') or a function defined at module level of an "
                         "importable module (not in __main__, not a lambda or a closure)")
    return module, qualname


def _load_once(blob: bytes, suffix: str, trust: bool):
    digest = hashlib.sha256(blob).hexdigest()
    if digest not in _LOADED:
        folder = Path(tempfile.mkdtemp(prefix="kq_task_"))  # artifacts stay readable while loaded
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        path = folder / f"model{suffix}"
        path.write_bytes(blob)
        if suffix == ".keras":
            from .model_files import load_model

            _LOADED[digest] = load_model(path, trust=trust)
            path.unlink()
        else:
            from .export.runtime import load

            _LOADED[digest] = load(path)
    return _LOADED[digest]


def fingerprint(*parts) -> str:
    """A short SHA-256 of models (weights and config, or an artifact's bytes), arrays and JSON
    data: results kept in a ``folder`` are reused only for the same inputs."""
    digest = hashlib.sha256()
    for part in parts:
        if hasattr(part, "get_weights") and hasattr(part, "to_json"):
            digest.update(part.to_json().encode())
            for weight in part.get_weights():
                digest.update(np.ascontiguousarray(weight).tobytes())
        elif getattr(part, "path", None) is not None and Path(part.path).is_file():
            digest.update(Path(part.path).read_bytes())
        elif isinstance(part, np.ndarray):
            digest.update(str((part.dtype, part.shape)).encode() + np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _result_file(folder: Path, key: str) -> Path:
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def _finished(folder: Optional[Path], keys) -> dict:
    if folder is None:
        return {}
    found = {}
    for key in keys:
        path = _result_file(folder, key)
        if path.is_file():
            record = json.loads(path.read_text())
            if record.get("key") == key:
                found[key] = record["result"]
    return found


def _pin_threads(ray) -> None:
    """TensorFlow's thread pools in this Ray worker sized to the CPUs Ray gave the task (once
    per worker: TensorFlow fixes them when it first runs an op)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if not cpus:
        return
    from ._keras import tf

    threads = max(1, int(cpus))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # already running (a later task in the same worker): sized by the first
        pass


def _task(function: Callable, shared: Any, *args):
    """What a Ray worker runs: ``function(shared, *args)`` on the task's share of the CPUs."""
    import ray

    _pin_threads(ray)
    return function(shared, *args)


def _import_ray():
    try:
        import ray
    except ImportError as error:
        raise ImportError(f"executor='ray' needs Ray ({error}); install it with {INSTALL_HINT}") from None
    return ray


def start_ray(address: Optional[str] = None, num_cpus: Optional[int] = None):
    """Initialize Ray in this process the way the executor does and return the module: no
    dashboard, workers' output not copied to the driver, TensorFlow's native log quiet.
    ``address`` None starts a new instance on this machine (with ``num_cpus``), even when
    `ray start` runs one, which plain ``ray.init()`` would join."""
    ray = _import_ray()
    ray.init(address=address or "local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}})
    return ray


def run_tasks(function: Callable, tasks: Mapping[str, tuple], *, shared: Any = None, executor: str = "local",
              address: Optional[str] = None, folder: Optional[os.PathLike] = None, max_retries: int = 3,
              cpus_per_task: int = 1, on_result: Optional[Callable[[str, Any], None]] = None) -> dict:
    """``{key: function(shared, *args)}`` for every ``key -> args`` of ``tasks`` (module docstring).

    ``function`` must be importable by name (a module-level function) for Ray to ship it;
    results must be JSON data when ``folder`` is given. ``on_result(key, result)`` is called
    as each result arrives (also for results found in ``folder``). ``cpus_per_task``: the CPUs a
    Ray task reserves and the threads its TensorFlow uses (ignored locally, where TensorFlow
    uses every core).
    """
    check_executor(executor)
    if not (isinstance(cpus_per_task, int) and cpus_per_task >= 1):
        raise ValueError(f"cpus_per_task must be a positive integer, got {cpus_per_task!r}")
    folder = None if folder is None else Path(folder)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    results = _finished(folder, tasks)
    for key, result in results.items():
        if on_result is not None:
            on_result(key, result)
    todo = {key: args for key, args in tasks.items() if key not in results}

    def keep(key, result):
        if folder is not None:
            write_json(_result_file(folder, key), {"key": key, "result": result})
        results[key] = result
        if on_result is not None:
            on_result(key, result)

    if executor == "local":
        for key, args in todo.items():
            keep(key, function(shared, *args))
    elif todo:
        ray = _import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            start_ray(address)
        try:
            remote = ray.remote(max_retries=max_retries, num_cpus=cpus_per_task)(_task)
            shared_ref = ray.put(shared)
            pending = {remote.remote(function, shared_ref, *args): key for key, args in todo.items()}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    keep(pending.pop(ref), ray.get(ref))
        finally:
            if started_here:
                ray.shutdown()
    return {key: results[key] for key in tasks}
