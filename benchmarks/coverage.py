"""Coverage: do real architectures export as the model that was attacked?

Architectures: the zoo's ``cnn_small``, ``ds_cnn``, ``resnet_small``, ``mobilenet_v2_small`` and
``mobilenet_v3_small`` on Fashion-MNIST (28×28×1), and what users bring —
``keras.applications.MobileNetV2`` (alpha 0.35) and ``MobileNetV3Small`` (alpha 0.75, no
preprocessing layer) on a 32×32×3 version of Fashion-MNIST (zero-padded to 32×32, the gray channel
repeated: the data this machine has). Each is trained normally (fidelity, not robustness,
is measured here), quantized by RobustQuantizer at w8a8, w6a6, w4a4 and w2a2, exported to
full-integer TFLite (LiteRT with XNNPACK), QDQ ONNX (onnxruntime; ≤ 4-bit weights as
INT4, the default) and Akida (``.fbz``, its software backend; the ``akida`` extra installed):
the RobustQuantizer model's grids carried where Akida can hold them, else — for 4- or 8-bit
weights, when the float model converts — quantizeml's own quantization of the float model
at the setting's bits (another function than the RobustQuantizer model: the row says which;
otherwise the reason is listed). Each file is scored in its own runtime against the Keras
model it came from — for Akida its Akida twin (``kq.export.akida_twin``, what guard attacks
for ``--target akida``; the twin's top-1 agreement with the RobustQuantizer model is listed):

* top-1 agreement on the test images, and how many scores lie within one output step;
  top-1 agreement on the test images with every pixel moved by ±ε (between two input
  levels, where attacks put their points);
* bytes per parameter of the file (parameters of the float model), and of its constant
  tensors alone (TFLite and ONNX): the floor a file of this format and these per-channel
  scales and biases cannot go below;
* latency per batch of 1 and of 32 (median of repeated runs), and the float TFLite file's;
* clean accuracy, file and Keras model;
* Square (gradient-free, so it attacks the file itself) on the first ``--square-images``
  test images at L∞ ε = 0.1, on the file and on the Keras twin with the same seed and
  budget, with 95 % Wilson intervals;
* how long ``RobustQuantizer.quantize`` takes.

Targets (issue 20): agreement ≥ 99.9 % (w8a8, w6a6, w4a4) and ≥ 99.5 % (w2a2);
``quantize`` ≤ 5 s for every zoo model. Sizes and latencies are reported.

The full run takes hours on 2 cores (Square on every file and twin dominates), so each
finished architecture × setting is a committed record in benchmarks/results/coverage_rows/,
named by a fingerprint of the trained model's weights, the run's settings and the sources it
depends on (the quantizer, the export and runtime code, Square, and this script's scoring
functions). A rerun — here or after a fresh clone, with the trained models committed by
benchmarks/checkpoint.py — keeps every record whose fingerprint still matches and scores the
rest; each record names the machine and commit that measured it, and so does the table.

    ./run.sh bench coverage            # writes benchmarks/results/coverage.{json,md}
    ./run.sh bench coverage --quick    # 1 epoch, 500 test images, a tiny Square: a smoke run
"""

from __future__ import annotations

import argparse
import inspect
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import keras_qrobust as kq
from _common import CACHE, CODE_VERSION, load_cached, machine, publish, save_cached, without_machine_paths
from _models import trained_model
from keras_qrobust.quantizers.grid import parse_setting
from keras_qrobust.bench import files_digest, fingerprint, log, run_description, targets_table, write_json

EPS = 0.1
SETTINGS = ("w8a8", "w6a6", "w4a4", "w2a2")
ZOO = ("cnn_small", "ds_cnn", "resnet_small", "mobilenet_v2_small", "mobilenet_v3_small")
APPLICATIONS = {  # what users bring: the name in the results -> (cache stem, builder)
    "keras.applications.MobileNetV2(alpha=0.35), 32x32x3": (
        "mobilenetv2_a0.35", lambda: kq.keras.applications.MobileNetV2(
            alpha=0.35, weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None)),
    "keras.applications.MobileNetV3Small(alpha=0.75), 32x32x3": (
        "mobilenetv3small_a0.75", lambda: kq.keras.applications.MobileNetV3Small(
            alpha=0.75, weights=None, input_shape=(32, 32, 3), classes=10, include_preprocessing=False,
            classifier_activation=None)),
}
AGREEMENT_TARGET = {"w2a2": 0.995}  # else 0.999
QUANTIZE_TARGET_SECONDS = 5.0
SQUARE_P_INIT = 0.8
RUNTIMES = ("tflite", "onnx", "akida")  # Akida where the model converts (akida_file)
_ROUTES = {"carried": "grids carried", "quantizeml": "quantizeml's grids"}
ROWS = Path(__file__).resolve().parent / "results" / "coverage_rows"
_LIBRARY = Path(kq.__file__).resolve().parent
# what a record's numbers depend on besides the model and the settings
_SOURCES = ("quantization", "quantizers", "layers", "metrics.py", "_keras.py", "transforms", "export",
            "attacks/square.py", "attacks/_queries.py", "attacks/_common.py")


def rgb32(x: np.ndarray) -> np.ndarray:
    """28×28×1 images -> 32×32×3: zero-padded by 2, the gray channel repeated."""
    return np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)


def applications_model(name: str, epochs: int, seed: int):
    """A keras.applications model of :data:`APPLICATIONS` trained on the 32×32×3 images (cached)."""
    stem, build = APPLICATIONS[name]
    path = CACHE / f"fashion_mnist_rgb32_{stem}_e{epochs}_s{seed}.keras"
    if (found := load_cached(path)) is not None:
        return found
    x, y = kq.datasets.load("fashion_mnist", "train")
    kq.defenses.set_seed(seed, deterministic_ops=True)
    model = build()
    for layer in model.layers:  # a few epochs: moving statistics that follow the weights
        if isinstance(layer, kq.keras.layers.BatchNormalization):
            layer.momentum = 0.9
    start = time.perf_counter()
    kq.defenses.train_classifier(model, rgb32(x), y, epochs=epochs, batch_size=128, seed=seed, verbose=0)
    info = {"train_seconds": round(time.perf_counter() - start, 1)}
    CACHE.mkdir(exist_ok=True)
    save_cached(model, path, info)
    return model, info


def latency_ms(model, x: np.ndarray, batch: int, repeats: int) -> float:
    """Median wall time of ``model.predict`` on one batch of ``batch`` inputs, in ms."""
    inputs = x[:batch]
    model.predict(inputs)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(inputs)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def square_pair(deployed, keras_model, x, y, queries: int, seed: int) -> dict:
    out = {}
    for name, model in (("artifact", deployed), ("keras", keras_model)):
        found = kq.attacks.square(model, x, y, eps=EPS, queries=queries, p_init=SQUARE_P_INIT,
                                  rescale_schedule=True, seed=seed, verbose=0)
        robust = int(np.sum(kq.metrics.predict_labels(model, found) == y))
        out[name] = {"robust_accuracy": robust / len(y), "interval95": list(kq.metrics.wilson_interval(robust,
                                                                                                        len(y)))}
    return out


def akida_file(model, qmodel, setting: str, path: Path, samples) -> tuple[Path | None, object, str]:
    """The .fbz of ``setting`` and its Akida twin (what guard attacks for --target akida), and
    the route: ``qmodel``'s grids carried (``"carried"``), or where it cannot carry them,
    quantizeml's own quantization of the float ``model`` at the setting's bits
    (``"quantizeml"``). Without a file: ``(None, None, why)`` (no akida extra, or neither route
    computes the model: the first reason, shortened)."""
    def short(reason: str) -> str:
        return reason[:160] + ("…" if len(reason) > 160 else "")

    weight_bits, activation_bits = parse_setting(setting)
    try:
        if not (reasons := kq.export.check_akida_compatible(qmodel)):
            path = kq.export.akida(qmodel, path, samples[:512])
            return path, kq.export.akida_twin(qmodel, samples[:512], file=path), "carried"
        if weight_bits not in (4, 8) or kq.export.check_akida_compatible(model):
            return None, None, short(reasons[0])
        bits = {"weight_bits": weight_bits, "activation_bits": activation_bits}
        path = kq.export.akida(model, path, samples[:512], **bits)
        return path, kq.export.akida_twin(model, samples[:512], file=path, **bits), "quantizeml"
    except ImportError as error:
        return None, None, f"not installed ({error})"
    except kq.transforms.UnsupportedModelError as error:
        return None, None, short(str(error).replace("\n", " "))


def _sources_digest() -> bytes:
    files = []
    for name in _SOURCES:
        path = _LIBRARY / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    scoring = "".join(inspect.getsource(f) for f in (score_setting, latency_ms, square_pair, akida_file))
    return files_digest(files) + scoring.encode()


def score_setting(model, setting: str, name: str, data, x_perturbed, float_ms: dict, args, folder: Path) -> dict:
    """One architecture at one setting: quantize, export to every runtime, score each file."""
    x_train, x_test, y_test = data
    samples = x_train[:1024]
    n_params = int(model.count_params())
    start = time.perf_counter()
    qmodel = kq.RobustQuantizer.from_setting(setting).quantize(model, samples)
    quantize_seconds = time.perf_counter() - start
    scores = qmodel.predict(x_test, verbose=0, batch_size=256)
    perturbed_scores = qmodel.predict(x_perturbed, verbose=0, batch_size=256)
    step = float(qmodel.get_layer("output_quantizer").step)
    entry = {"quantize_seconds": round(quantize_seconds, 2), "exact": bool(kq.export.lower(qmodel).exact),
             "keras_accuracy": float(np.mean(scores.argmax(1) == y_test)), "float_tflite_ms": float_ms,
             "runtimes": {}}
    for runtime in RUNTIMES:
        reference, attacked, extra = scores, qmodel, {}
        if runtime == "akida":
            path, twin, route = akida_file(model, qmodel, setting, folder / f"{name}_{setting}.fbz", samples)
            if path is None:
                entry["runtimes"][runtime] = {"skipped": route}
                log(f"{name} {setting} akida: {route}")
                continue
            # scored against its Akida twin, the model guard attacks for --target akida
            reference, attacked = twin.model.predict(x_test, verbose=0, batch_size=256), twin.model
            extra = {"route": route, "twin_exact": twin.exact, "twin_approximated": list(twin.approximated),
                     "twin_accuracy": float(np.mean(reference.argmax(1) == y_test))}
            if route == "carried":  # and how the twin (so the file) differs from the RobustQuantizer model
                extra["agreement_robustquantizer"] = float(np.mean(reference.argmax(1) == scores.argmax(1)))
            perturbed_reference = twin.model.predict(x_perturbed, verbose=0, batch_size=256)
        else:
            path = getattr(kq.export, runtime)(qmodel, folder / f"{name}_{setting}.{runtime}")
            perturbed_reference = perturbed_scores
        deployed = kq.export.load(path)
        found = deployed.predict(x_test)
        difference = np.abs(found - reference) / step
        entry["runtimes"][runtime] = {
            "agreement": float(np.mean(found.argmax(1) == reference.argmax(1))),
            "agreement_perturbed": float(np.mean(deployed.predict(x_perturbed).argmax(1)
                                                 == perturbed_reference.argmax(1))),
            "within_one_step": float(np.mean(difference <= 1.01)),
            "max_steps": float(difference.max()),
            "accuracy": float(np.mean(found.argmax(1) == y_test)),
            "bytes_per_param": path.stat().st_size / n_params,
            "tensor_bytes_per_param": tensor_bytes(path) / n_params if runtime != "akida" else None,
            "ms": {str(b): latency_ms(deployed, x_test, b, args.repeats) for b in (1, 32)},
            "square": square_pair(deployed, attacked, x_test[:args.square_images], y_test[:args.square_images],
                                  args.square_queries, args.seed),
            **extra,
        }
        log(f"{name} {setting} {runtime}: agreement {entry['runtimes'][runtime]['agreement']:.4%}, "
            f"{entry['runtimes'][runtime]['bytes_per_param']:.3f} B/param")
    return entry


def tensor_bytes(path: Path) -> int:
    """Bytes of the file's constant tensors at their stored width (weights, scales, zero points,
    biases): the floor of its size for this format, without the graph around them."""
    return kq.export.profile.memory_analysis(path, batch_size=1).weights_bytes


def tensors(cell: dict) -> str:
    value = cell.get("tensor_bytes_per_param")
    return "" if value is None else f" ({value:.3f})"


# taken once, at import: the source this process runs, even if the files are edited meanwhile
_SOURCE = _sources_digest()


def score_architecture(name: str, model, data, args, folder: Path, rows: Path) -> dict:
    """Every setting of one architecture: its kept record, or scored now and recorded."""
    x_train, x_test, y_test = data
    # every pixel ±ε: inputs between two of the input's levels, where an attack's points lie
    signs = np.random.default_rng(args.seed).choice([-1.0, 1.0], size=x_test.shape)
    x_perturbed = np.clip(x_test + EPS * signs, 0.0, 1.0).astype(np.float32)
    row = {"architecture": name, "params": int(model.count_params()),
           "float_accuracy": kq.metrics.accuracy(model, x_test, y_test), "settings": {}}
    float_ms = None  # measured once per run, only when a setting is scored in it
    for setting in SETTINGS:
        key = fingerprint(model, source=_SOURCE, extra=[name, setting, len(x_test), args.square_images,
                                                       args.square_queries, args.repeats, args.seed])
        record = rows / f"{key}.json"
        if record.exists():
            row["settings"][setting] = json.loads(record.read_text())["entry"]
            log(f"{name} {setting}: kept {record.name[:12]}… (measured by {_short(row['settings'][setting]['code'])})")
            continue
        if float_ms is None:
            float_file = kq.export.load(kq.export.tflite(model, folder / f"{name}_float.tflite", precision="float32"))
            float_ms = {str(b): latency_ms(float_file, x_test, b, args.repeats) for b in (1, 32)}
        entry = score_setting(model, setting, name, data, x_perturbed, float_ms, args, folder)
        entry.update(machine=machine(), code=CODE_VERSION)
        rows.mkdir(parents=True, exist_ok=True)
        write_json(record, without_machine_paths({"architecture": name, "setting": setting, "entry": entry}))
        row["settings"][setting] = entry
    return row


def checks(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        for setting, entry in row["settings"].items():
            target = AGREEMENT_TARGET.get(setting, 0.999)
            for runtime, found in entry["runtimes"].items():
                if "skipped" in found:
                    continue
                out.append({"check": f"{row['architecture']} {setting} {runtime}: top-1 agreement ≥ {100 * target:g}%",
                            "value": f"{100 * found['agreement']:.2f}%", "passed": found["agreement"] >= target})
                out.append({"check": f"{row['architecture']} {setting} {runtime}: top-1 agreement at ±ε-perturbed "
                                     f"inputs ≥ {100 * target:g}%",
                            "value": f"{100 * found['agreement_perturbed']:.2f}%",
                            "passed": found["agreement_perturbed"] >= target})
            if row["architecture"] in ZOO:
                out.append({"check": f"{row['architecture']} {setting}: quantize ≤ {QUANTIZE_TARGET_SECONDS:g} s",
                            "value": f"{entry['quantize_seconds']:.2f} s",
                            "passed": entry["quantize_seconds"] <= QUANTIZE_TARGET_SECONDS})
    return out


def _short(code: str) -> str:
    commit, _, changes = code.partition("+")
    return commit[:7] + ("+" + changes if changes else "")


def _twin_note(found: dict) -> str:
    note = "twin exact on the probe inputs" if found["twin_exact"] else f"twin {found['twin_approximated'][0]}"
    if "agreement_robustquantizer" in found:
        note += f", top-1 agreement with the RobustQuantizer model {100 * found['agreement_robustquantizer']:.2f}%"
    return note


def markdown(data: dict) -> str:
    lines = ["# Coverage: real architectures, exported and re-measured in their runtimes", "",
             f"{run_description(data)} {data['test_images']} Fashion-MNIST test images (32×32×3 "
             f"for the keras.applications models); Square: {data['square_queries']} queries, "
             f"p_init {SQUARE_P_INIT}, L∞ ε = {EPS}, "
             f"on the first {data['square_images']}; seed {data['seed']}. Models trained normally "
             f"({data['epochs']} epochs): this table measures fidelity, not robustness. Latency: median of "
             "repeated `predict` calls on a shared 2-core CPU — a ranking, not a speed claim.", "",
             "| architecture | setting | runtime | agreement % (at ±ε) | scores within 1 step % | max steps | "
             "accuracy % (Keras) | B/param (tensors) | ms batch 1 / 32 (float TFLite) | Square % file (Keras twin) "
             "| quantize s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in data["architectures"]:
        for setting, entry in row["settings"].items():
            fl = entry["float_tflite_ms"]
            for runtime, f in entry["runtimes"].items():
                if "skipped" in f:
                    lines.append(f"| {row['architecture']} | {setting} | {runtime} | not exported: "
                                 f"{f['skipped'].replace('|', '/')} ||||||| ")
                    continue
                sq = f["square"]
                keras_accuracy = f.get("twin_accuracy", entry["keras_accuracy"])
                label = f"{runtime} ({_ROUTES[f['route']]})" if "route" in f else runtime
                lines.append(
                    f"| {row['architecture']} | {setting} | {label} | {100 * f['agreement']:.2f} "
                    f"({100 * f['agreement_perturbed']:.2f}) | "
                    f"{100 * f['within_one_step']:.2f} | {f['max_steps']:.0f} | {100 * f['accuracy']:.2f} "
                    f"({100 * keras_accuracy:.2f}) | {f['bytes_per_param']:.3f}{tensors(f)} | "
                    f"{f['ms']['1']:.1f} / {f['ms']['32']:.1f} ({fl['1']:.1f} / {fl['32']:.1f}) | "
                    f"{100 * sq['artifact']['robust_accuracy']:.1f} ({100 * sq['keras']['robust_accuracy']:.1f}) | "
                    f"{entry['quantize_seconds']:.2f} |")
    twins = [f"{row['architecture']} {setting}: {_twin_note(f)}" for row in data["architectures"]
             for setting, entry in row["settings"].items() for f in entry["runtimes"].values() if "route" in f]
    if twins:
        lines += ["", "Akida rows are scored against the file's Akida twin (`kq.export.akida_twin`, the model guard "
                  "attacks for `--target akida`; its accuracy in the Keras column, Square on it beside the file's): "
                  + "; ".join(twins) + "."]
    measured = sorted({(_short(e["code"]), e["machine"]["cpu"]["model"], e["machine"]["date"][:10])
                       for row in data["architectures"] for e in row["settings"].values()})
    lines += ["", "Each architecture × setting is a record of benchmarks/results/coverage_rows/ (a row's latencies, "
              "the float TFLite file's included, come from one run). Measured by: "
              + "; ".join(f"{code} on {cpu}, {date}" for code, cpu, date in measured) + "."]
    lines += ["", *targets_table(data["checks"]), "", "## Models", ""]
    lines += [f"- {row['architecture']}: {row['params']:,} parameters, float accuracy "
              f"{100 * row['float_accuracy']:.2f}%, `{row['training']}`" for row in data["architectures"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="1 epoch, 500 test images, Square on 10 images with 100 queries: a smoke run")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--images", type=int, default=10000, help="test images scored (default: all 10,000)")
    parser.add_argument("--square-images", type=int, default=200)
    parser.add_argument("--square-queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per latency")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.images, args.square_images, args.square_queries, args.repeats = 1, 500, 10, 100, 5
    x_train, _ = kq.datasets.load("fashion_mnist", "train")
    x_test, y_test = kq.datasets.load("fashion_mnist", "test")
    x_test, y_test = x_test[:args.images], y_test[:args.images]
    rows = []
    records = CACHE / "coverage_rows_quick" if args.quick else ROWS  # a smoke run's records are not committed
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name in ZOO:
            model, info = trained_model(name, args.epochs, args.seed)
            rows.append({**score_architecture(name, model, (x_train, x_test, y_test), args, folder, records),
                         "training": info})
        for name in APPLICATIONS:
            model, info = applications_model(name, args.epochs, args.seed)
            rows.append({**score_architecture(name, model, (rgb32(x_train), rgb32(x_test), y_test), args,
                                              folder, records), "training": info})
    command = "./run.sh bench coverage" + (" --quick" if args.quick else "")
    data = {"command": command, "machine": machine(), "epochs": args.epochs, "test_images": len(x_test),
            "square_images": args.square_images, "square_queries": args.square_queries, "seed": args.seed,
            "architectures": rows, "checks": checks(rows)}
    publish("coverage", args.quick, data, markdown(data))


if __name__ == "__main__":
    main()
