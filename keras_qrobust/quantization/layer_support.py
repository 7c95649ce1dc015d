"""Which Keras layers RobustQuantizer accepts, and what each becomes in the Keras twin and the int8 file.

:data:`LAYER_SUPPORT` is the supported-layer table of README.md and docs/quantization.md:
both carry :func:`support_table` between ``<!-- layer-support -->`` markers, written by
``python -m keras_qrobust.quantization.layer_support --write`` and checked by the tests, and
:func:`~keras_qrobust.quantization.RobustQuantizer.quantize` accepts exactly these kinds
(``transforms._kinds.SUPPORTED``; a test keeps the two equal).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from .._io import write_text
from .._tables import markdown_table

__all__ = ["LAYER_SUPPORT", "support_table", "write_tables"]

#: Keras class name -> (what the quantized Keras model computes, what the int8 TFLite / QDQ ONNX file computes)
LAYER_SUPPORT: dict[str, tuple[str, str]] = {
    "InputLayer": ("input quantized to 8 bits over its calibrated range", "the file's int8 input"),
    "Conv2D": ("weights on a symmetric per-output-channel b-bit grid; bias on its int32 grid",
               "CONV_2D / Conv with the same codes (k·m in int8; ≤ 4-bit ONNX weights packed as INT4)"),
    "DepthwiseConv2D": ("as Conv2D (depth_multiplier 1 to export)", "DEPTHWISE_CONV_2D / depthwise Conv, same codes"),
    "SeparableConv2D": ("depthwise and pointwise kernels each on their grid (depth_multiplier 1 to export)",
                        "a depthwise and a 1x1 convolution"),
    "Dense": ("as Conv2D", "a 1x1 CONV_2D / Conv between reshapes, same codes"),
    "BatchNormalization": ("folded into the weight layer before it (else a named error)", "nothing: folded"),
    "ReLU": ("clipped to [0, max] on a 2^b-level activation grid (ReLU6: max ≤ 6)",
             "the previous op's int8 output grid, clipped to its 2^b levels"),
    "Activation": ("relu as ReLU; softmax, sigmoid and tanh onto the int8 grid their kernels write; any other "
                   "function quantized to 8 bits after it", "the matching int8 op (for other functions its own "
                   "approximation, not checked to be exact)"),
    "Softmax": ("its output onto the int8 grid of SOFTMAX (step 1/256)", "SOFTMAX / Softmax"),
    "HardSigmoid": ("keras.applications' relu6(x + 3)/6 chains, folded into one layer; its gate onto an 8-bit "
                    "grid chosen away from ties", "a 1x1 depthwise convolution (weight 1/6) whose output clips"),
    "Add": ("the sum quantized to 8 bits over its calibrated range", "ADD / Add, requantized to that grid"),
    "Multiply": ("the product (squeeze-excite) quantized to 8 bits over its calibrated range", "MUL / Mul"),
    "Concatenate": ("each input requantized onto the output's grid", "1x1 depthwise identity convolutions, then "
                    "CONCATENATION / Concat on one grid"),
    "MaxPooling2D": ("values of its input (grid kept)", "MAX_POOL_2D / MaxPool"),
    "GlobalMaxPooling2D": ("values of its input (grid kept)", "REDUCE_MAX / ReduceMax"),
    "AveragePooling2D": ("the mean quantized to 8 bits (padding='valid' to export)",
                         "a depthwise convolution with weights 1/count"),
    "GlobalAveragePooling2D": ("the mean quantized to 8 bits", "a depthwise convolution with weights 1/count"),
    "ZeroPadding2D": ("values of its input (grid kept)", "PAD / Pad with the zero point"),
    "Cropping2D": ("values of its input (grid kept)", "STRIDED_SLICE / Slice"),
    "Flatten": ("values of its input (grid kept)", "RESHAPE / Reshape"),
    "Reshape": ("values of its input (grid kept)", "RESHAPE / Reshape"),
    "Dropout": ("identity at inference", "nothing"),
    "SpatialDropout2D": ("identity at inference", "nothing"),
    "GaussianNoise": ("identity at inference", "nothing"),
}

_START, _END = "<!-- layer-support:start -->", "<!-- layer-support:end -->"
_BLOCK = re.compile(re.escape(_START) + r".*?" + re.escape(_END), re.S)
#: files that carry the table, relative to the repository root
DOCUMENTS = ("README.md", "docs/quantization.md")


def support_table() -> str:
    """:data:`LAYER_SUPPORT` as a Markdown table."""
    rows = [(f"`{kind}`", keras, file) for kind, (keras, file) in LAYER_SUPPORT.items()]
    return markdown_table(("layer", "in the quantized Keras model", "in the int8 TFLite / ONNX file"), rows)


def _with_table(text: str, path: Path) -> str:
    if not _BLOCK.search(text):
        raise ValueError(f"{path} has no {_START} … {_END} block to hold the supported-layer table")
    return _BLOCK.sub(lambda _: f"{_START}\n{support_table()}\n{_END}", text)


def write_tables(root: Path, check: bool = False) -> list[Path]:
    """Write :func:`support_table` into each of :data:`DOCUMENTS` under ``root`` (temp file,
    then rename); with ``check``, write nothing. Returns the files that were (or would be) changed."""
    changed = []
    for name in DOCUMENTS:
        path = root / name
        text = path.read_text(encoding="utf-8")
        updated = _with_table(text, path)
        if updated != text:
            changed.append(path)
            if not check:
                write_text(path, updated)
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Print the supported-layer table, or write it into "
                                     + " and ".join(DOCUMENTS))
    parser.add_argument("--write", action="store_true", help="update the table in the repository's documents")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    if not args.write:
        print(support_table())
        return 0
    for path in write_tables(args.root):
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
