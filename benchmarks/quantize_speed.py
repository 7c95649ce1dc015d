"""How long ``RobustQuantizer.quantize`` takes, per architecture and setting (issue 20).

The coverage benchmark's seven models (zoo cnn_small, ds_cnn, resnet_small, MobileNetV2- and
MobileNetV3-small at 28×28×1; keras.applications MobileNetV2 α 0.35 and MobileNetV3Small α 0.75
at 32×32×3; trained 5 epochs, cached in benchmarks/.cache and trained there when missing), each
quantized at w8a8, w6a6, w4a4 and w2a2 on the 1,024 training images coverage calibrates on,
``--runs`` times in a row. One untimed quantization of an untrained cnn_small first loads
TensorFlow's kernels, so no architecture pays for the process starting; every timed run is
reported, the first included.

The coverage table times one quantization per row while Square attacks run beside it on
the same two cores; this benchmark is the timing: nothing else should run meanwhile, and the
CPU time other processes used during the runs (Linux: /proc/stat less this process's own) is
recorded to show it.

Target (issue 20): ``quantize`` ≤ 5 s for every zoo model, every run. The keras.applications
models are reported, not checked (they are not zoo models).

    ./run.sh bench quantize_speed            # writes benchmarks/results/quantize_speed.{json,md}
    ./run.sh bench quantize_speed --quick    # cnn_small and ds_cnn at w4a4, 2 runs: a smoke run
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import keras_qrobust as kq
from _common import machine, publish
from _models import trained_model
from coverage import APPLICATIONS, QUANTIZE_TARGET_SECONDS, SETTINGS, ZOO, applications_model, rgb32
from keras_qrobust.bench import log, run_description, targets_table, timed

CALIBRATION_IMAGES = 1024


def busy_cpu_seconds() -> float | None:
    """CPU seconds every process has used since boot (Linux /proc/stat; None elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot() -> tuple[float | None, float]:
    """Every process's CPU seconds and this process's own, now: :func:`others_since` takes it."""
    return busy_cpu_seconds(), time.process_time()


def others_since(snapshot: tuple[float | None, float]) -> float | None:
    """CPU seconds other processes used since ``snapshot`` (None without /proc/stat)."""
    busy, own = snapshot
    return None if busy is None else busy_cpu_seconds() - busy - (time.process_time() - own)


def time_quantize(model, samples: np.ndarray, setting: str, runs: int) -> tuple[list[float], list[float | None]]:
    """Seconds of each of ``runs`` calls of ``RobustQuantizer.from_setting(setting).quantize``, and
    the CPU seconds other processes used during each (None without /proc/stat)."""
    quantizer = kq.RobustQuantizer.from_setting(setting)
    seconds, others = [], []
    for _ in range(runs):
        snapshot = cpu_snapshot()
        _, wall = timed(quantizer.quantize, model, samples)
        other = others_since(snapshot)
        seconds.append(round(wall, 3))
        others.append(None if other is None else round(other, 2))
    return seconds, others


def checks(rows: list[dict]) -> list[dict]:
    return [{"check": f"{row['architecture']} {row['setting']}: quantize ≤ {QUANTIZE_TARGET_SECONDS:g} s, every run",
             "value": f"{max(row['seconds']):.2f} s (slowest of {len(row['seconds'])})",
             "passed": max(row["seconds"]) <= QUANTIZE_TARGET_SECONDS}
            for row in rows if row["zoo"]]


def _contention(entry: dict) -> str:
    if entry["other_cpu_seconds"] is None:
        return "Other processes' CPU time was not measured (no /proc/stat)."
    share = entry["other_cpu_seconds"] / entry["wall_seconds"]
    return (f"Other processes used {entry['other_cpu_seconds']:.1f} CPU seconds during the "
            f"{entry['wall_seconds']:.0f} s of runs ({share:.0%} of one core).")


def markdown(data: dict) -> str:
    lines = ["# RobustQuantizer.quantize: seconds per architecture and setting", "",
             f"{run_description(data)} Code {data['machine'].get('code', 'unknown')}. "
             f"{data['calibration_images']} calibration images; {data['runs']} runs in a row per row, the first "
             f"included. {_contention(data['contention'])}", "",
             "| architecture | setting | seconds per run | slowest s | other processes' CPU s per run |",
             "|---|---|---|---|---|"]
    for row in data["rows"]:
        others = ", ".join("—" if o is None else f"{o:.1f}" for o in row["other_cpu_seconds"])
        lines.append(f"| {row['architecture']} | {row['setting']} | "
                     f"{', '.join(f'{s:.2f}' for s in row['seconds'])} | {max(row['seconds']):.2f} | {others} |")
    lines += ["", *targets_table(data["checks"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed quantizations per architecture and setting")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of the coverage models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="cnn_small and ds_cnn at w4a4, 2 runs: a smoke run")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    zoo, applications, settings = ZOO, tuple(APPLICATIONS), SETTINGS
    if args.quick:
        zoo, applications, settings, args.runs = ZOO[:2], (), ("w4a4",), 2
    x_train, _ = kq.datasets.load("fashion_mnist", "train")
    samples = x_train[:CALIBRATION_IMAGES]
    models = [(name, True, trained_model(name, args.epochs, args.seed)[0], samples) for name in zoo]
    models += [(name, False, applications_model(name, args.epochs, args.seed)[0], rgb32(samples))
               for name in applications]
    kq.RobustQuantizer().quantize(kq.zoo.cnn_small(), samples[:64])  # TensorFlow's start-up, untimed
    snapshot, wall = cpu_snapshot(), time.perf_counter()
    rows = []
    for name, zoo_model, model, calibration in models:
        for setting in settings:
            seconds, others = time_quantize(model, calibration, setting, args.runs)
            rows.append({"architecture": name, "zoo": zoo_model, "setting": setting, "seconds": seconds,
                         "other_cpu_seconds": others})
            log(f"{name} {setting}: {', '.join(f'{s:.2f}' for s in seconds)} s (others: {others})")
    others = others_since(snapshot)
    others = None if others is None else round(others, 1)
    contention = {"other_cpu_seconds": others, "wall_seconds": round(time.perf_counter() - wall, 1)}
    command = "./run.sh bench quantize_speed" + (" --quick" if args.quick else "")
    data = {"command": command, "machine": machine(), "runs": args.runs, "epochs": args.epochs,
            "calibration_images": CALIBRATION_IMAGES, "contention": contention,
            "rows": rows, "checks": checks(rows)}
    publish("quantize_speed", args.quick, data, markdown(data))


if __name__ == "__main__":
    main()
