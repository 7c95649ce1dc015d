"""A model as (functional config, weights by layer name): what graph rewrites edit.

Rewrites work on the serialized config, never on the caller's layer objects, so the model
the user passed is left untouched; :meth:`Graph.to_model` builds fresh layers and loads the
weights.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .._keras import check_model, keras, registered_objects
from ._kinds import only_reshapes

__all__ = ["Graph", "UnsupportedModelError", "graph_rewrite"]


class UnsupportedModelError(ValueError):
    """The model (or one of its layers) cannot be handled by a graph rewrite."""


@dataclass
class Graph:
    """Functional-model config plus the weights of each layer, by layer name."""

    config: dict
    weights: dict[str, list[np.ndarray]] = field(default_factory=dict)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_model(cls, model) -> "Graph":
        model = check_model(model)
        if isinstance(model, keras.Sequential):
            config = _sequential_to_functional(model)
        elif getattr(model, "_is_graph_network", False):
            config = copy.deepcopy(model.get_config())
        else:
            raise UnsupportedModelError(
                f"Model '{model.name}' ({type(model).__name__}) is a subclassed model; graph "
                "rewrites need a Sequential or functional model. Rebuild it with keras.Sequential "
                "or the functional API (keras.Input -> layers -> keras.Model)."
            )
        graph = cls(config=config)
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                raise UnsupportedModelError(
                    f"Layer '{layer.name}' is a nested model ({type(layer).__name__}); flatten it "
                    "into the outer model (call its layers directly) before quantizing."
                )
            graph.weights[layer.name] = [np.array(w) for w in layer.get_weights()]
        for entry in graph.layers:
            if len(entry.get("inbound_nodes") or []) > 1:
                raise UnsupportedModelError(
                    f"Layer '{entry['name']}' is called {len(entry['inbound_nodes'])} times "
                    "(shared layer); graph rewrites need each layer used once."
                )
        return graph

    def to_model(self, custom_objects: dict | None = None):
        objects = {**registered_objects(), **(custom_objects or {})}
        model = keras.Model.from_config(copy.deepcopy(self.config), custom_objects=objects)
        for layer in model.layers:
            saved = self.weights.get(layer.name)
            if not saved:
                continue
            current = layer.get_weights()
            # Layers that gained weights (e.g. quantizer ranges) keep their initial values
            # for the weights the source layer did not have.
            layer.set_weights(list(saved) + current[len(saved):])
        return model

    def copy(self) -> "Graph":
        return Graph(copy.deepcopy(self.config), {k: list(v) for k, v in self.weights.items()})

    # ------------------------------------------------------------------- navigation
    @property
    def layers(self) -> list[dict]:
        return self.config["layers"]

    def layer(self, name: str) -> dict:
        for entry in self.layers:
            if entry["name"] == name:
                return entry
        raise KeyError(name)

    def has_layer(self, name: str) -> bool:
        return any(entry["name"] == name for entry in self.layers)

    @staticmethod
    def inbound_names(entry: dict) -> list[str]:
        nodes = entry.get("inbound_nodes") or []
        if not nodes:
            return []
        if nodes[0] and isinstance(nodes[0][0], str):  # a TFOpLambda's node: one [layer, node, tensor, kwargs]
            return [nodes[0][0]]
        return [ref[0] for ref in nodes[0]]

    def consumers(self, name: str) -> list[str]:
        return [e["name"] for e in self.layers if name in self.inbound_names(e)]

    def is_output(self, name: str) -> bool:
        return any(ref[0] == name for ref in self.config["output_layers"])

    @staticmethod
    def kind(entry: dict) -> str:
        """The layer's class name (without a registration package prefix)."""
        return entry["class_name"].split(">")[-1]

    def reaches_only(self, name: str, kinds: tuple[str, ...]) -> bool:
        """Every path out of ``name`` reaches a layer of ``kinds`` through reshapes only
        (:data:`~keras_qrobust.transforms._kinds.RESHAPES`, a linear activation), none an output."""
        consumers = [self.layer(c) for c in self.consumers(name)]
        if not consumers or self.is_output(name):
            return False
        return all(self.kind(c) in kinds or (only_reshapes(self.kind(c), c["config"].get("activation"))
                                             and self.reaches_only(c["name"], kinds)) for c in consumers)

    def iter_layers(self, class_names: tuple[str, ...] | None = None) -> Iterator[dict]:
        for entry in list(self.layers):
            if class_names is None or entry["class_name"] in class_names:
                yield entry

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.inbound_names(self.layer(name)))
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self.inbound_names(self.layer(current)))
        return seen

    # ---------------------------------------------------------------------- editing
    def unique_name(self, base: str) -> str:
        names = {e["name"] for e in self.layers}
        if base not in names:
            return base
        i = 1
        while f"{base}_{i}" in names:
            i += 1
        return f"{base}_{i}"

    def _redirect(self, old: str, new_ref: list) -> None:
        """Point every reference to layer ``old`` (tensor 0) at ``new_ref``."""
        for entry in self.layers:
            for node in entry.get("inbound_nodes") or []:
                if node and isinstance(node[0], str):  # a TFOpLambda's node is one reference
                    if node[0] == old:
                        node[:3] = list(new_ref[:3])
                    continue
                for i, ref in enumerate(node):
                    if ref[0] == old:
                        node[i] = [new_ref[0], new_ref[1], new_ref[2], ref[3] if len(ref) > 3 else {}]
        self.config["output_layers"] = [
            [new_ref[0], new_ref[1], new_ref[2]] if ref[0] == old else ref
            for ref in self.config["output_layers"]
        ]

    def remove_passthrough(self, name: str) -> None:
        """Remove a single-input layer, connecting its consumers to its input."""
        entry = self.layer(name)
        (source,) = entry["inbound_nodes"][0]
        self.layers.remove(entry)
        self.weights.pop(name, None)
        self._redirect(name, list(source[:3]))

    def insert_after(self, name: str, class_name: str, layer_config: dict) -> str:
        """Insert a new single-input layer right after ``name``; return the new name."""
        new_name = self.unique_name(layer_config.get("name") or f"{name}_{class_name.lower()}")
        layer_config = dict(layer_config, name=new_name)
        entry = {
            "class_name": class_name,
            "config": layer_config,
            "name": new_name,
            "inbound_nodes": [[[name, 0, 0, {}]]],
        }
        self._redirect(name, [new_name, 0, 0])  # before the new entry joins the list
        index = self.layers.index(self.layer(name))
        self.layers.insert(index + 1, entry)
        return new_name

    def replace(self, name: str, class_name: str, layer_config: dict) -> None:
        """Swap the class and config of a layer, keeping its name, inputs and weights."""
        entry = self.layer(name)
        entry["class_name"] = class_name
        entry["config"] = dict(layer_config, name=name)
        entry.pop("module", None)
        entry.pop("registered_name", None)
        entry.pop("build_config", None)  # the old layer's input shape: the new one is built when called


def _sequential_to_functional(model) -> dict:
    if not model.built or not model.inputs:
        raise UnsupportedModelError(
            f"Sequential model '{model.name}' has no input shape yet; give its first layer "
            "input_shape=..., start it with keras.Input(...), or call model.build(input_shape)."
        )
    seq_layers = copy.deepcopy(model.get_config()["layers"])
    layers: list[dict] = []
    if not seq_layers or seq_layers[0]["class_name"] != "InputLayer":
        input_tensor = model.inputs[0]
        name = f"{model.name}_input"
        seq_layers.insert(
            0,
            {
                "class_name": "InputLayer",
                "config": {
                    "batch_input_shape": list(input_tensor.shape),
                    "dtype": input_tensor.dtype.name,
                    "sparse": False,
                    "ragged": False,
                    "name": name,
                },
            },
        )
    previous = None
    for entry in seq_layers:
        name = entry["config"]["name"]
        entry["name"] = name
        entry["inbound_nodes"] = [] if previous is None else [[[previous, 0, 0, {}]]]
        layers.append(entry)
        previous = name
    input_name = layers[0]["name"]
    return {
        "name": model.name,
        "trainable": model.trainable,
        "layers": layers,
        "input_layers": [[input_name, 0, 0]],
        "output_layers": [[previous, 0, 0]],
    }


def graph_rewrite(rewrite: Callable[..., Graph]) -> Callable:
    """Let a ``Graph -> Graph`` rewrite also take a model, returning a new model.

    The model passed in is not modified.
    """

    @functools.wraps(rewrite)
    def wrapper(graph_or_model, *args, **kwargs):
        if isinstance(graph_or_model, Graph):
            return rewrite(graph_or_model, *args, **kwargs)
        return rewrite(Graph.from_model(graph_or_model), *args, **kwargs).to_model()

    return wrapper
