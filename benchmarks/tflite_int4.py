"""Can a TFLite file store 4-bit weights as INT4 and still be the Keras model's exact twin?

A probe of this stack's converter and LiteRT (issue 20 asks for packed int4 TFLite weights
"where LiteRT's kernels accept them"). For each weight op the lowering writes — CONV_2D 3x3,
CONV_2D 1x1 (Dense layers are lowered to it), DEPTHWISE_CONV_2D 3x3 — two one-op models
compute the same function: 4-bit weight codes ``k`` (``|k| ≤ 7``) with a per-channel step
Δ, between an 8-bit input and an 8-bit output fake quant, the weights stored

* as int8 (an 8-bit narrow-range fake quant on ``[-127Δ, 127Δ]``: the lowering's container), or
* as INT4 (a 4-bit narrow-range fake quant on ``[-7Δ, 7Δ]``, which the TF 2.19 TFLite
  converter packs into an INT4 tensor, two codes per byte).

Inputs: random int8 codes. Reported per op: the file sizes, the ops left after LiteRT applies
its default delegate (XNNPACK: "DELEGATE" when it took the op), and the fraction of output
codes where the INT4 file differs from the int8 file — with the default resolver (what users
run, and what keras_qrobust's exactness is measured against) and with LiteRT's reference
kernels.

    ./run.sh bench tflite_int4          # writes benchmarks/results/tflite_int4.{json,md}
"""

from __future__ import annotations

import argparse

import numpy as np

import keras_qrobust as kq
from _common import machine, publish
from keras_qrobust.bench import run_description

tf = kq.tf

OPS = {"CONV_2D 3x3": ("conv", 3, 64, 64), "CONV_2D 1x1": ("conv", 1, 512, 256),
       "DEPTHWISE_CONV_2D 3x3": ("depthwise", 3, 128, 128)}


def one_op_model(kind: str, channels_in: int, codes: np.ndarray, storage_bits: int) -> bytes:
    """TFLite bytes of input FQ -> op with weights ``codes·Δ`` in ``storage_bits`` containers -> output FQ."""
    keras = kq.keras
    channels = codes.shape[2] if kind == "depthwise" else codes.shape[3]
    step = np.linspace(0.01, 0.02, channels).astype(np.float32)
    kernel = tf.constant(codes * (step[:, None] if kind == "depthwise" else step))
    limit = step * float(2 ** (storage_bits - 1) - 1)

    def op(x):
        weights = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            tf.transpose(kernel, [0, 1, 3, 2]) if kind == "depthwise" else kernel, -limit, limit,
            num_bits=storage_bits, narrow_range=True)
        if kind == "depthwise":
            y = tf.nn.depthwise_conv2d(x, tf.transpose(weights, [0, 1, 3, 2]), [1, 1, 1, 1], "SAME")
        else:
            y = tf.nn.conv2d(x, weights, 1, "SAME")
        return tf.quantization.fake_quant_with_min_max_vars(y, -8.0, 8.0, num_bits=8)

    inputs = keras.Input((6, 6, channels_in))
    x = keras.layers.Lambda(lambda t: tf.quantization.fake_quant_with_min_max_vars(t, 0.0, 1.0, num_bits=8))(inputs)
    model = keras.Model(inputs, keras.layers.Lambda(op)(x))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


def run_file(blob: bytes, x: np.ndarray, resolver) -> tuple[np.ndarray, list[str]]:
    """Output codes and the ops left after delegation."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=blob, experimental_op_resolver_type=resolver)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).astype(np.int32)
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    return out, ops


def weight_types(blob: bytes) -> list[int]:
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(blob))
    return sorted({t.type for t in model.subgraphs[0].tensors if len(t.shape) == 4 and
                   model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data)})


def probe(seed: int, images: int) -> dict:
    from ai_edge_litert.interpreter import OpResolverType

    rng = np.random.default_rng(seed)
    rows = {}
    for name, (kind, size, c_in, c_out) in OPS.items():
        shape = (size, size, c_in, 1 if kind == "depthwise" else c_out)
        codes = rng.integers(-7, 8, shape).astype(np.float32)
        blobs = {bits: one_op_model(kind, c_in, codes, bits) for bits in (8, 4)}
        x = rng.integers(-128, 128, (images, 6, 6, c_in)).astype(np.int8)
        row = {"bytes_int8": len(blobs[8]), "bytes_int4": len(blobs[4]),
               "weight_tensor_types": {str(bits): weight_types(blob) for bits, blob in blobs.items()}}
        for label, resolver in (("default", OpResolverType.AUTO), ("reference", OpResolverType.BUILTIN_REF)):
            out8, ops8 = run_file(blobs[8], x, resolver)
            try:
                out4, ops4 = run_file(blobs[4], x, resolver)
            except ValueError as error:  # LiteRT refuses the op version INT4 weights need
                row[label] = {"ops_int8": ops8, "refused": str(error).splitlines()[0]}
                continue
            row[label] = {"ops_int8": ops8, "ops_int4": ops4, "differing_outputs": float(np.mean(out8 != out4)),
                          "max_code_difference": int(np.abs(out8 - out4).max())}
        rows[name] = row
    return rows


def markdown(data: dict) -> str:
    lines = ["# INT4 weights in TFLite: what this stack's LiteRT does with them", "",
             f"{run_description(data)} Code {data['machine'].get('code', 'unknown')}. One-op models, 4-bit codes "
             f"stored as int8 vs INT4 (TFLite tensor type 17), {data['images']} random int8 inputs of 6×6; seed "
             f"{data['seed']}.", "",
             "| op | bytes int8 → INT4 | default resolver: ops (int8 / INT4 file) | outputs differing, default "
             "| outputs differing, reference kernels |", "|---|---|---|---|---|"]
    def differing(cell: dict) -> str:
        if "refused" in cell:
            return f"INT4 file refused: {cell['refused']}"
        return f"{100 * cell['differing_outputs']:.3f}% (max {cell['max_code_difference']} codes)"

    for name, row in data["ops"].items():
        default = row["default"]
        ops4 = " ".join(default.get("ops_int4", ["—"]))
        lines.append(f"| {name} | {row['bytes_int8']:,} → {row['bytes_int4']:,} | {' '.join(default['ops_int8'])} / "
                     f"{ops4} | {differing(default)} | {differing(row['reference'])} |")
    lines += ["", "Reading: the converter packs the 4-bit fake quant into INT4 and LiteRT runs it; where the "
              "default resolver shows the INT4 op outside a DELEGATE, XNNPACK did not take it and LiteRT's builtin "
              "kernel ran it — a kernel that rounds requantization differently from the XNNPACK path the int8 "
              "file runs on, so the INT4 file is not the same function as the int8 file the Keras twin is exact "
              "to. keras_qrobust therefore keeps int8 containers in TFLite (4-bit size is ONNX's INT4, opset 21)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = {"command": "./run.sh bench tflite_int4", "machine": machine(), "images": args.images,
            "seed": args.seed, "tensorflow": tf.__version__, "ops": probe(args.seed, args.images)}
    publish("tflite_int4", False, data, markdown(data))


if __name__ == "__main__":
    main()
