"""Loading a saved model without running code from the file: the one model loader.

A saved Keras model is a program. Deserializing it can run Python the file carries or names:
a ``Lambda`` layer's marshalled bytecode (``.h5``, SavedModel, and ``.keras`` with
``safe_mode=False``), a ``{"module": ..., "class_name": "function"}`` entry that makes Keras
import any module and fetch any function from it (``.keras``), or an unknown class that makes
Keras import the module it names. ``safe_mode`` of tf_keras 2.19 covers only the first, and
only for ``.keras``.

:func:`load_model` reads the model's configuration *as data* first (``config.json`` of a
``.keras`` zip, the ``model_config`` attribute of an ``.h5`` file, ``keras_metadata.pb`` of a
SavedModel folder), walks every object entry in it and allows only:

* classes Keras itself resolves (``keras.layers``, initializers, regularizers, constraints,
  optimizers, losses, metrics, models) and registered classes defined in tf_keras, tfmot,
  quantizeml (the ``akida`` extra: :func:`keras_qrobust.export.quantize_for_akida`'s models) or
  keras_qrobust;
* functions that are Keras built-ins (activations, losses, metrics);
* ``TFOpLambda`` entries naming TensorFlow math/array operations (keras.applications models
  use them: ``x + 3``, ``tf.nn.relu6``), never file, I/O or Python-calling operations;
* modules under ``keras``/``tf_keras``, ``tensorflow_model_optimization``, ``quantizeml``,
  ``keras_qrobust``.

A SavedModel is also a TensorFlow graph: its graph and function library are scanned for
operations that touch files or call Python (``WriteFile``, ``PyFunc``, ...).

Anything else is refused with :class:`UntrustedModelError` before Keras deserializes a byte,
unless the caller passes ``trust=True`` (CLI ``--trust-model``) for a file they wrote.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Iterator, Optional

__all__ = ["UntrustedModelError", "ModelFileError", "load_model", "read_model_config", "register_named_packages",
           "untrusted_entries"]

#: top-level packages whose classes and functions a model file may name
TRUSTED_PACKAGES = ("tf_keras", "keras", "tensorflow_model_optimization", "keras_qrobust", "quantizeml")
#: TensorFlow API prefixes a TFOpLambda may call (pure tensor math)
_TF_OP_PREFIXES = ("__operators__.", "math.", "nn.", "linalg.", "compat.v1.nn.", "compat.v1.math.")
_TF_OPS = frozenset({
    "reshape", "transpose", "concat", "stack", "unstack", "expand_dims", "squeeze", "identity", "cast", "clip_by_value",
    "split", "pad", "gather", "shape", "maximum", "minimum", "add", "subtract", "multiply", "divide", "truediv",
    "abs", "sqrt", "square", "exp", "sigmoid", "tanh", "reduce_mean", "reduce_sum", "reduce_max", "reduce_min",
    "ones_like", "zeros_like", "where", "tile", "broadcast_to", "image.resize", "compat.v1.shape", "matmul", "round",
    "sign", "floor", "ceil", "slice", "strided_slice", "fill", "range", "one_hot", "argmax", "argmin", "einsum",
})
#: graph operations a loaded SavedModel must not hold: they read or write files, or run Python
_DANGEROUS_OPS = frozenset({
    "WriteFile", "ReadFile", "PyFunc", "PyFuncStateless", "EagerPyFunc", "MatchingFiles", "WholeFileReader",
    "WholeFileReaderV2", "Save", "SaveSlices", "PrintV2", "DebugIdentityV2", "DebugIdentityV3",
    "WriteSummary", "WriteRawProtoSummary", "CreateSummaryFileWriter", "ImmutableConst",
})
#: Keras' special serialized values that are plain data
_DATA_ENTRIES = frozenset({"__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__", "__tuple__",
                           "TensorShape", "CompositeTensor"})
_TYPESPECS = frozenset({"TensorSpec", "RaggedTensorSpec", "SparseTensorSpec"})
_TRUST_HINT = "load it with trust=True (CLI: --trust-model) only if you wrote the file or trust its author"


class ModelFileError(ValueError):
    """The file is not a readable tf_keras model (missing, damaged, or not a model)."""


class UntrustedModelError(ValueError):
    """The model file names code outside Keras, tfmot, quantizeml and keras_qrobust, which loading would run."""


SAVE_HINT = "save it with tf_keras: `import keras_qrobust as kq; model.save('model.keras')`"


def _keras_zip_config(path: Path) -> dict:
    """The config.json of a ``.keras`` file, after checking the archive is whole and not Keras 3."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            damaged = archive.testzip()
            members = {n: archive.read(n) for n in ("config.json", "metadata.json") if n in names and damaged is None}
        metadata, config = (json.loads(members[n]) if n in members else None for n in ("metadata.json", "config.json"))
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise ModelFileError(f"{path} is not a readable .keras file ({error}); the file is corrupt or truncated: "
                             f"{SAVE_HINT}") from None
    if damaged is not None or metadata is None or config is None:
        what = f"member {damaged} is damaged" if damaged else "it has no config.json/metadata.json"
        raise ModelFileError(f"{path} is not a valid .keras file ({what}): {SAVE_HINT}")
    version = str(metadata.get("keras_version", "")) if isinstance(metadata, dict) else ""
    if version.startswith("3"):
        raise ModelFileError(
            f"{path} is a Keras 3 model file (saved with Keras {version}). keras_qrobust works on Keras 2 (tf_keras) "
            "models, which tfmot, quantizeml and cnn2snn require. Build the model with "
            "`import keras_qrobust as kq; keras = kq.keras` (or `import tf_keras as keras`) and save it again.")
    return config


def _h5_config(path: Path) -> dict:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            text = f.attrs.get("model_config")
    except OSError as error:
        raise ModelFileError(f"{path} is not a readable HDF5 file ({error}); {SAVE_HINT}") from None
    if text is None:
        raise ModelFileError(f"{path} holds no model configuration (a weights-only file?); save the whole model "
                             f"with model.save(path), not save_weights; {SAVE_HINT}")
    try:
        return json.loads(text.decode() if isinstance(text, bytes) else text)
    except ValueError as error:
        raise ModelFileError(f"{path}: its model configuration is not JSON ({error}); {SAVE_HINT}") from None


def _saved_model_configs(folder: Path) -> list:
    import importlib

    from ._keras import keras

    # tf_keras's own protobuf module, named through the one module that imports Keras
    saved_metadata_pb2 = importlib.import_module(f"{keras.__name__}.protobuf.saved_metadata_pb2")
    metadata_file = folder / "keras_metadata.pb"
    if not metadata_file.is_file():
        raise ModelFileError(f"{folder} is not a tf_keras SavedModel (no keras_metadata.pb); {SAVE_HINT}")
    metadata = saved_metadata_pb2.SavedMetadata()
    try:
        metadata.ParseFromString(metadata_file.read_bytes())
        return [json.loads(node.metadata) for node in metadata.nodes if node.metadata]
    except Exception as error:  # noqa: BLE001 - protobuf raises its own DecodeError
        raise ModelFileError(f"{folder}/keras_metadata.pb is damaged ({error}); {SAVE_HINT}") from None


def _saved_model_ops(folder: Path) -> set:
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((folder / "saved_model.pb").read_bytes())
    except Exception as error:  # noqa: BLE001 - a missing or damaged graph is one user problem
        raise ModelFileError(f"{folder}/saved_model.pb is missing or damaged ({error}); {SAVE_HINT}") from None
    ops = set()
    for meta_graph in proto.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def read_model_config(path) -> list:
    """The configuration(s) of a saved model as plain JSON data, read without deserializing:
    ``[config]`` for ``.keras``/``.h5``, one entry per saved object for a SavedModel folder."""
    path = Path(path)
    if path.is_dir():
        return _saved_model_configs(path)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return [_keras_zip_config(path)]
    if suffix in (".h5", ".hdf5"):
        return [_h5_config(path)]
    raise ModelFileError(f"{path} is not a saved tf_keras model: give a .keras or .h5 file or a SavedModel folder")


def _known_names() -> tuple[frozenset, dict]:
    """Class names Keras resolves by itself, and registered objects from trusted packages."""
    from ._keras import keras

    modules = [keras.layers, keras.initializers, keras.regularizers, keras.constraints, keras.optimizers,
               keras.optimizers.legacy, keras.losses, keras.metrics, keras.models, keras.mixed_precision]
    names = {name for module in modules for name, value in vars(module).items() if isinstance(value, type)}
    names |= {"Functional", "Sequential", "Model", "Policy", "TFOpLambda", "SlicingOpLambda"}
    registered = {key: value for key, value in keras.utils.get_custom_objects().items() if _trusted(value)}
    return frozenset(names), registered


def _trusted(obj) -> bool:
    return (getattr(obj, "__module__", None) or "").split(".")[0] in TRUSTED_PACKAGES


def _trusted_module(module: str) -> bool:
    return module.split(".")[0] in TRUSTED_PACKAGES or module == "builtins"


def _keras_builtin_function(name: str) -> bool:
    from tensorflow.python.util import tf_export

    return any(tf_export.get_symbol_from_name(f"keras.{module}.{name}") is not None
               for module in ("activations", "losses", "metrics", "optimizers", "initializers"))


def _tf_op_allowed(function: object) -> bool:
    return isinstance(function, str) and (function.startswith(_TF_OP_PREFIXES) or function in _TF_OPS)


def _entry_problems(entry: dict, known: frozenset, registered: dict) -> Iterator[str]:
    kind = entry.get("class_name")
    if not isinstance(kind, str):
        return
    name = (entry.get("config") or {}).get("name") if isinstance(entry.get("config"), dict) else None
    label = f"{kind} {name!r}" if name else kind
    module = entry.get("module")
    if kind in ("Lambda", "__lambda__"):
        yield f"a Lambda layer ({label}) whose Python code would run on load"
        return
    if module is not None and (not isinstance(module, str) or not _trusted_module(module)):
        yield f"{label} names the module {module!r}, outside Keras, tfmot, quantizeml and keras_qrobust"
        return
    if kind in _DATA_ENTRIES:
        return
    if kind == "TypeSpec":  # SavedModel metadata: a name looked up in TensorFlow's type-spec registry
        if not str(entry.get("type_spec", "")).startswith("tf."):
            yield f"a type spec {entry.get('type_spec')!r} outside TensorFlow's"
        return
    if kind == "__typespec__":
        if entry.get("spec_name") not in _TYPESPECS:
            yield f"a type spec {entry.get('spec_name')!r} Keras would have to import"
        return
    if kind == "function":
        function = entry.get("config")
        if not (isinstance(function, str) and (_keras_builtin_function(function)
                                               or entry.get("registered_name") in registered)):
            yield f"the function {function!r} (module {module!r}), which is not a Keras built-in"
        return
    if kind in ("TFOpLambda", "SlicingOpLambda"):
        function = (entry.get("config") or {}).get("function")
        if not _tf_op_allowed(function):
            yield f"{label} calls tf.{function}, which is not a tensor math operation"
        return
    if kind in known or entry.get("registered_name", kind) in registered or kind in registered:
        return
    yield f"the class {kind!r}, whose code is not in Keras, tfmot, quantizeml or keras_qrobust"


#: configuration keys that only ``compile=True`` deserializes (optimizer, loss, metrics)
_TRAINING_KEYS = ("compile_config", "training_config")


def register_named_packages(config) -> None:
    """Import quantizeml when the configuration names it (quantize_for_akida's models): its
    classes register with Keras on import, and loading needs them. Nothing if it is not installed."""
    if '"quantizeml.' in json.dumps(config):
        try:
            import quantizeml  # noqa: F401
        except ImportError:
            pass


def untrusted_entries(config, training: bool = False) -> list[str]:
    """Why loading a model with this configuration (plain JSON data) could run foreign code:
    one line per offending entry, in the order met; empty when every entry is allowed.
    ``training``: also inspect the training configuration (loaded only with ``compile=True``;
    a custom loss there is no reason to refuse an uncompiled load)."""
    register_named_packages(config)  # its entries are refused as unknown classes if it is not installed
    known, registered = _known_names()
    problems: list[str] = []

    def walk(node) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if "class_name" in node:
                problems.extend(p for p in _entry_problems(node, known, registered) if p not in problems)
            for key, value in node.items():
                if training or key not in _TRAINING_KEYS:
                    walk(value)

    walk(config)
    return problems


def check_model_file(path, compile: bool = False) -> None:
    """Raise :class:`UntrustedModelError` (one line) if loading ``path`` (with ``compile``)
    could run code from it, :class:`ModelFileError` if it is not a readable tf_keras model file."""
    path = Path(path)
    problems = untrusted_entries(read_model_config(path), training=compile)
    if path.is_dir():
        problems += [f"the graph operation {op}, which reads or writes files or runs Python"
                     for op in sorted(_saved_model_ops(path) & _DANGEROUS_OPS)]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UntrustedModelError(f"{path} was not loaded: it holds {problems[0]}{more}; {_TRUST_HINT}")


def load_model(path, *, trust: bool = False, compile: bool = False, check: Optional[bool] = None):
    """Load a saved tf_keras model (``.keras``, ``.h5`` or SavedModel folder) without running
    code from it: the configuration is inspected as data first (see the module docstring) and a
    file naming foreign code is refused with :class:`UntrustedModelError` unless ``trust``.

    Args:
        path: the file or SavedModel folder.
        trust: skip the inspection and allow ``Lambda`` layers (``safe_mode=False``): only for
            files you wrote or whose author you trust.
        compile: restore the training configuration too (off: attacks and export need none).
        check: inspect even when ``trust`` (default: inspect unless ``trust``).
    """
    from ._keras import keras

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path} does not exist; pass the path of a saved tf_keras model (.keras, .h5 or "
                             "SavedModel folder)")
    if check if check is not None else not trust:
        check_model_file(path, compile)
    elif path.is_file() and path.suffix.lower() == ".keras":
        _keras_zip_config(path)  # whole and not Keras 3, also when trusted
    kwargs = {"safe_mode": not trust} if path.suffix.lower() == ".keras" and path.is_file() else {}
    return keras.models.load_model(str(path), compile=compile, **kwargs)
