"""``keras-qrobust quantize``: train (or load) a model, quantize it at wXaY settings, print the
accuracy table."""

from __future__ import annotations

import time

from ..guard.config import check_seed
from .checks import check_model_on, positive
from .errors import UsageError
from .options import add_force, add_trust
from .outputs import new_folder, output_file
from .terminal import say

__all__ = ["DEFAULT_SETTINGS", "add_parser", "run"]

DEFAULT_SETTINGS = "w8a8,w6a6,w4a4,w3a3,w2a2,w3"


def add_parser(commands) -> None:
    q = commands.add_parser(
        "quantize",
        help="train (or load) a model, quantize it at wXaY settings, print the accuracy table",
        description="Train a zoo model (or load --model), post-training quantize it with "
        "RobustQuantizer at each setting and print clean test accuracy per setting.",
    )
    q.add_argument("--dataset", default="fashion_mnist", help="dataset name (default: fashion_mnist)")
    source = q.add_mutually_exclusive_group()
    source.add_argument("--model", help="a saved tf_keras model (.keras, .h5 or SavedModel folder)")
    source.add_argument("--zoo", default="cnn_small", help="zoo model to train (default: cnn_small)")
    add_trust(q)
    add_force(q)
    q.add_argument("--epochs", type=int, default=3, help="training epochs for --zoo (default: 3)")
    q.add_argument("--settings", default=DEFAULT_SETTINGS,
                   help=f"comma-separated wXaY / wX settings (default: {DEFAULT_SETTINGS})")
    q.add_argument("--input-weight-bits", type=int, default=8, help="bits of the first layer's weights")
    q.add_argument("--calibration", choices=("max", "percentile", "mse"), default="mse",
                   help="how ReLU ranges are chosen (default: mse)")
    q.add_argument("--calibration-samples", type=int, default=1024)
    q.add_argument("--train-samples", type=int, default=None, help="use only the first N training images")
    q.add_argument("--test-samples", type=int, default=None, help="score on the first N test images")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--save-dir", help="save the float and quantized models (.keras) here")
    q.add_argument("--overwrite", action="store_true", help="replace existing files in --save-dir and --json")
    q.add_argument("--json", help="also write the results as JSON to this file")


def run(args) -> int:
    import numpy as np

    from .. import zoo
    from .._io import atomic_path, write_json
    from .._tables import markdown_table, percent
    from ..inputs import load_data, load_model_file
    from ..metrics import accuracy
    from ..defenses import set_seed, train_classifier
    from ..quantization import RobustQuantizer

    for name in ("epochs", "calibration_samples", "train_samples", "test_samples"):
        positive(getattr(args, name), f"--{name.replace('_', '-')}")
    check_seed(args.seed)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    try:
        quantizers = [RobustQuantizer.from_setting(setting, input_weight_bits=args.input_weight_bits,
                                                   calibration=args.calibration) for setting in settings]
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from None
    save_dir = new_folder(args.save_dir, overwrite=True, argument="--save-dir") if args.save_dir else None
    if args.json:
        output_file(args.json, ".json", args.overwrite, "--json")

    data = load_data(args.dataset, args.train_samples, args.test_samples)
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    num_classes = data.num_classes

    if args.model:
        model = load_model_file(args.model, trust=args.trust_model)
        check_model_on(model, data, args)
        trained = f"loaded from {args.model}"
    else:
        set_seed(args.seed)
        model = zoo.get(args.zoo, input_shape=x_train.shape[1:], num_classes=num_classes)

    targets = {}
    if save_dir is not None:
        names = [model.name] + [f"{model.name}_{q.setting}" for q in quantizers]
        targets = {name: save_dir / f"{name}.keras" for name in names}
        existing = [str(p) for p in targets.values() if p.exists()]
        if existing and not args.overwrite:  # refuse before training or writing anything
            raise UsageError(f"--save-dir: {', '.join(existing)} exists; pass --overwrite to replace it, or another "
                             "--save-dir")
    if not args.model:
        say(f"training {args.zoo} on {len(x_train)} {args.dataset} images for {args.epochs} epochs ...")
        start = time.perf_counter()
        train_classifier(model, x_train, y_train, epochs=args.epochs, seed=args.seed)
        trained = f"{args.zoo}, {args.epochs} epochs, {time.perf_counter() - start:.0f} s"

    rng = np.random.default_rng(args.seed)
    calibration = x_train[rng.choice(len(x_train), min(args.calibration_samples, len(x_train)), replace=False)]
    results = [{"setting": "fp32", "accuracy": accuracy(model, x_test, y_test), "seconds": None}]
    quantized = {}
    for quantizer in quantizers:
        setting = quantizer.setting
        start = time.perf_counter()
        qmodel = quantizer.quantize(model, calibration)
        seconds = time.perf_counter() - start
        quantized[setting] = qmodel
        results.append({"setting": setting, "accuracy": accuracy(qmodel, x_test, y_test), "seconds": seconds,
                        "quantizer": str(quantizer)})
        say(f"  {setting}: {100 * results[-1]['accuracy']:.2f}% ({seconds:.2f} s to quantize)")

    base = results[0]["accuracy"]
    rows = [
        [r["setting"], percent(r["accuracy"]), "" if r["setting"] == "fp32" else f"{100 * (r['accuracy'] - base):+.2f}",
         "" if r["seconds"] is None else f"{r['seconds']:.2f}"]
        for r in results
    ]
    print(f"\n{args.dataset}: {trained}; RobustQuantizer PTQ, {len(calibration)} calibration images, "
          f"{args.calibration} calibration, first-layer weights {args.input_weight_bits} bits; "
          f"test accuracy on {len(x_test)} images\n")
    print(markdown_table(["setting", "accuracy %", "vs fp32", "quantize s"], rows))

    for m in [model, *quantized.values()]:
        if m.name in targets:
            with atomic_path(targets[m.name], overwrite=args.overwrite) as tmp:
                m.save(tmp)
    if targets:
        say(f"models saved in {save_dir}")
    if args.json:
        write_json(args.json, {"dataset": args.dataset, "model": trained, "results": results},
                   overwrite=args.overwrite)
    return 0
