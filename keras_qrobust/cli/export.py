"""``keras-qrobust export``: export a saved model to a target and re-measure the file in its
own runtime."""

from __future__ import annotations

import argparse

from ..guard.config import TARGETS, check_seed
from .checks import check_model_on, positive
from .errors import UsageError
from .options import add_data_arguments, add_force, add_trust
from .outputs import output_file

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    x = commands.add_parser("export", help="export a saved model and re-measure it in its runtime",
                            description="Export --model to --target (a RobustQuantizer model is lowered exactly; Akida "
                            "takes the float model and quantizes it itself) and score the file in its own runtime.")
    x.add_argument("--model", required=True, help="a saved tf_keras model")
    add_trust(x)
    add_force(x)
    x.add_argument("--target", required=True, help=f"one of {', '.join(TARGETS)}")
    x.add_argument("--output", required=True, help="the file to write (.tflite, .onnx or .fbz)")
    x.add_argument("--representative-samples", type=int, default=512, help="calibration inputs (default: 512)")
    x.add_argument("--int4-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="ONNX: store ≤4-bit weights as packed INT4 (default: whenever a layer has ≤4-bit weights; "
                        "--no-int4-weights keeps int8)")
    x.add_argument("--weight-bits", type=int, default=None,
                   help="Akida, float model: weight bits, 4 or 8 (default: 4); a quantized model keeps its own")
    x.add_argument("--activation-bits", type=int, default=None,
                   help="Akida, float model: activation bits (default: 4); a quantized model keeps its own")
    x.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    add_data_arguments(x, test_default=1000)


def run(args) -> int:
    from .. import export, metrics
    from ..inputs import load_data, load_model_file

    if args.target not in TARGETS:
        raise UsageError(f"unknown --target {args.target!r}; choose one of {', '.join(TARGETS)}")
    output = output_file(args.output, TARGETS[args.target], args.overwrite, "--output")
    model = load_model_file(args.model, trust=args.trust_model)
    for name in ("representative_samples", "test_samples"):
        positive(getattr(args, name), f"--{name.replace('_', '-')}")
    check_seed(args.seed)
    if args.target == "akida":  # the library's own check, before any data is read
        given = {n: getattr(args, n) for n in ("weight_bits", "activation_bits") if getattr(args, n) is not None}
        try:
            export.akida_bits(model, **given)
        except ValueError as error:
            flags = " and ".join(f"--{n.replace('_', '-')}" for n in given)
            raise UsageError(f"{flags}: {error}" if flags else str(error)) from error
    data = load_data(args.dataset, train_samples=args.representative_samples, test_samples=args.test_samples)
    check_model_on(model, data, args)
    if args.target == "tflite-int8":
        export.tflite(model, output, representative=data.x_train, overwrite=args.overwrite)
    elif args.target == "onnx":
        export.onnx(model, output, representative=data.x_train, int4_weights=args.int4_weights,
                    overwrite=args.overwrite)
    else:
        export.akida(model, output, samples=data.x_train, weight_bits=args.weight_bits,
                     activation_bits=args.activation_bits, overwrite=args.overwrite)
    deployed = export.load(output)
    keras_labels = metrics.predict_labels(model, data.x_test)
    deployed_labels = metrics.predict_labels(deployed, data.x_test)
    print(f"{output} ({output.stat().st_size} bytes, {deployed.format} runtime) on {len(data.x_test)} {args.dataset} "
          f"test inputs: accuracy {100 * (deployed_labels == data.y_test).mean():.2f}% (Keras model "
          f"{100 * (keras_labels == data.y_test).mean():.2f}%), top-1 agreement "
          f"{100 * (keras_labels == deployed_labels).mean():.2f}%")
    return 0
