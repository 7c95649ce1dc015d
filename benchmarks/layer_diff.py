"""Where keras.applications.MobileNetV3Small's w4a4 TFLite file parts from its Keras twin (issue 20).

The coverage table (benchmarks/coverage.py) finds this file agreeing with the Keras model on
99.96% of test images but only 97.88% of its scores within one output step (at most 27
steps away). This script finds where that starts: ``kq.export.layer_diff.compare_layers``
cuts the lowered model after every tensor the int8 graph stores, converts each part as the
export does and runs it in LiteRT with XNNPACK (the default) and with the reference kernels,
reporting each tensor's largest difference in its own steps and the share of values off
(every tensor of the first blocks, where the difference starts, then every ``--every``-th:
each is a conversion and two runs, a minute for the deep ones).

Then it checks the cause at the first weight layer: the convolution computed the way the
integer kernel computes it — int32 sum of code products plus the int32 bias, the sum cast
to float32 and multiplied by ``float32(s_in·s_w/s_out)`` per channel, rounded half to even,
plus the output zero point — against XNNPACK's output codes and the Keras twin's (which sums
float products and rounds the float result: a value within float noise of halfway between
two levels may round the other way).

Model: the coverage benchmark's cached MobileNetV3Small (alpha 0.75, 32×32×3 Fashion-MNIST,
5 epochs; trained on first use), RobustQuantizer w4a4 calibrated on 1,024 training images;
inputs: the first ``--images`` test images.

    ./run.sh bench layer_diff     # writes benchmarks/results/layer_diff.{json,md}
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import keras_qrobust as kq
from _common import machine, publish
from coverage import applications_model, rgb32
from keras_qrobust.bench import log, run_description
from keras_qrobust.export.layer_diff import compare_layers, first_difference, stored_tensors
from keras_qrobust.export.runtime.tflite import KERNELS, TFLiteModel
from keras_qrobust.export.tflite import convert_lowered

ARCHITECTURE = "keras.applications.MobileNetV3Small(alpha=0.75), 32x32x3"
SETTING = "w4a4"
DEFAULTS = {"images": 1000, "first": 24, "every": 8, "epochs": 5}


def integer_emulation(lowered, layer: str, x: np.ndarray) -> dict:
    """The part of ``lowered`` up to the quantizer after the first CONV_2D, emulated in integer
    arithmetic from the file's own codes and scales, against XNNPACK, the reference kernels and
    the Keras twin (module docstring)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    part = kq.keras.Model(lowered.inputs, lowered.get_layer(layer).output)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "part.tflite"
        path.write_bytes(convert_lowered(part))
        files = {kernels: TFLiteModel(path, kernels=kernels) for kernels in KERNELS}
        found = {kernels: deployed.predict(x) for kernels, deployed in files.items()}
        # not run: read for its op, codes and scales (the builtin resolver lists the op, XNNPACK a DELEGATE)
        interpreter = Interpreter(model_path=str(path),
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()
    if [op["op_name"] for op in ops] != ["CONV_2D"]:
        raise ValueError(f"the part up to {layer} is not one CONV_2D: {[op['op_name'] for op in ops]}")
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    source, weights, bias = ops[0]["inputs"]
    s_in, z_in = details[source]["quantization"]
    s_out, z_out = details[ops[0]["outputs"][0]]["quantization"]
    s_w = details[weights]["quantization_parameters"]["scales"].astype(np.float32)
    kernel = np.transpose(interpreter.get_tensor(weights).astype(np.float64), (1, 2, 3, 0))  # OHWI -> HWIO
    config = lowered.get_layer(layer.removesuffix("_quantizer")).get_config()
    codes = np.clip(np.round(x / np.float32(s_in)) + z_in, -128, 127)  # as the runtime quantizes the input
    sums = kq.tf.nn.conv2d(codes.astype(np.float64) - z_in, kernel, strides=config["strides"],
                           padding=config["padding"].upper()).numpy() + interpreter.get_tensor(bias)
    multiplier = ((np.float32(s_in) * s_w) / np.float32(s_out)).astype(np.float32)
    emulated = np.clip(np.round(sums.astype(np.float32) * multiplier) + z_out, -128, 127).astype(np.int32)

    def output_codes(values):
        return np.round(values / np.float32(s_out)).astype(np.int32) + int(z_out)

    xnnpack, reference = output_codes(found["default"]), output_codes(found["reference"])
    twin = output_codes(part.predict(x, verbose=0))
    return {"layer": layer, "values": int(emulated.size), "largest_integer_sum": float(np.abs(sums).max()),
            "emulation_vs_xnnpack": int(np.sum(emulated != xnnpack)),
            "emulation_vs_reference": int(np.sum(emulated != reference)),
            "keras_twin_vs_xnnpack": int(np.sum(twin != xnnpack)),
            "keras_twin_vs_reference": int(np.sum(twin != reference))}


def run(args) -> dict:
    model, info = applications_model(ARCHITECTURE, args.epochs, 0)
    x_train, _ = kq.datasets.load("fashion_mnist", "train")
    x_test, _ = kq.datasets.load("fashion_mnist", "test")
    samples, x = rgb32(x_train[:1024]), rgb32(x_test[:args.images])
    qmodel = kq.RobustQuantizer.from_setting(SETTING).quantize(model, samples)
    lowered = kq.export.lower(qmodel).model
    names = stored_tensors(lowered)
    # every tensor of the first blocks (where a difference starts), then every EVERY-th and the output
    cuts = names[:args.first] + names[args.first::args.every][1:] + names[-1:]
    cuts = list(dict.fromkeys(cuts))
    log(f"{len(names)} stored tensors; comparing {len(cuts)} of them on {len(x)} images")
    rows = compare_layers(qmodel, x, layers=cuts, verbose=1)
    first_conv = next(name for name in names if name.endswith("_quantizer") and
                      type(lowered.get_layer(name.removesuffix("_quantizer"))).__name__ == "LoweredConv2D")
    emulation = integer_emulation(lowered, first_conv, x)
    first = {kernels: getattr(first_difference(rows, kernels), "layer", None) for kernels in ("default", "reference")}
    command = "./run.sh bench layer_diff" + "".join(f" --{k} {getattr(args, k)}" for k, v in DEFAULTS.items()
                                                   if getattr(args, k) != v)
    return {"command": command, "machine": machine(), "architecture": ARCHITECTURE, "setting": SETTING,
            "images": len(x), "stored_tensors": len(names), "first": args.first, "every": args.every,
            "training": info, "first_difference": first, "emulation": emulation,
            "rows": [{"layer": r.layer, "shape": list(r.shape), "step": r.step, "max_steps": r.max_steps,
                      "fraction_off": r.fraction_off} for r in rows]}


def markdown(data: dict) -> str:
    e = data["emulation"]
    lines = [f"# Where the {data['setting']} TFLite file of {data['architecture']} parts from its Keras twin", "",
             f"{run_description(data)} Code {data['machine'].get('code', 'unknown')}. {data['images']} test images. "
             "Each row: the lowered model cut after one tensor the int8 graph stores, converted as the export "
             "converts, run in LiteRT with its default delegate (XNNPACK) and with its reference kernels; the "
             "largest |file − Keras| in that tensor's steps and the share of values at least half a step off.", "",
             f"First tensor that differs — XNNPACK: `{data['first_difference']['default']}`; reference kernels: "
             f"`{data['first_difference']['reference']}`.", "",
             f"## The cause, at the first convolution (`{e['layer']}`, {e['values']:,} values)", "",
             "| computed by | values that differ from XNNPACK | from the reference kernels |", "|---|---|---|",
             f"| integer emulation (int sums, float32 multiplier, round half to even) | {e['emulation_vs_xnnpack']:,} "
             f"| {e['emulation_vs_reference']:,} |",
             f"| the Keras twin (float sums, rounded) | {e['keras_twin_vs_xnnpack']:,} | "
             f"{e['keras_twin_vs_reference']:,} |", "",
             f"Largest integer sum: {e['largest_integer_sum']:,.0f} (float32 holds integers exactly up to 2^24).", "",
             f"## Stored tensors compared ({len(data['rows'])} of {data['stored_tensors']}: the first "
             f"{data['first']}, then every {data['every']}th and the output)", "",
             "| tensor | shape | XNNPACK: max steps | XNNPACK: % off | reference: max steps | reference: % off |",
             "|---|---|---|---|---|---|"]
    for row in data["rows"]:
        m, f = row["max_steps"], row["fraction_off"]
        lines.append(f"| `{row['layer']}` | {tuple(row['shape'])} | {m['default']:.2f} | {100 * f['default']:.4f} | "
                     f"{m['reference']:.2f} | {100 * f['reference']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=DEFAULTS["images"])
    parser.add_argument("--first", type=int, default=DEFAULTS["first"], help="stored tensors compared one by one "
                        "from the input (default: 24)")
    parser.add_argument("--every", type=int, default=DEFAULTS["every"], help="then every N-th (default: 8)")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"],
                        help="training epochs of the cached model (as coverage)")
    args = parser.parse_args()
    data = run(args)
    publish("layer_diff", False, data, markdown(data))


if __name__ == "__main__":
    main()
