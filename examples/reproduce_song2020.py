"""Reproduce Song et al. 2020 ("Robust weight-quantized networks") on Fashion-MNIST.

Tables 1-4 structure — rows Orig. / Adv. (adversarial training, the recipe chosen on the
validation split) / F.L. (feedback learning), each also (Q) = 3-bit weight-only, +mu (μ-law
mapping of the last layer, eq. 3) and (Q)+mu; columns clean, CW-L2, FGSM weak/strong, PGD, BIM,
MIM white-box, the same attacks black-box (transferred from an independently trained
surrogate), Gaussian and uniform noise, and AutoAttack, the robust accuracy claims use — computed
by ``benchmarks/defenses.py`` (which this script runs, so it also writes
``benchmarks/results/defenses.{json,md}``), with the gradient-masking check of every +mu row
(SPSA, Square, transfer, BPDA). Then Fig. 3: the Lipschitz constant of the quantization
error σ_max(Q_3(W) − W) per layer (eq. 2) of the three float models, with their accuracy
under FGSM and PGD over ε, as a robustness report.

    .venv/bin/python examples/reproduce_song2020.py            # writes examples/results/song2020/
    .venv/bin/python examples/reproduce_song2020.py --quick    # short training, small slices

Options: those of ``benchmarks/defenses.py`` (``python benchmarks/defenses.py --help``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras_qrobust as kq
from keras_qrobust.bench import log, write_json, write_text

ROOT = Path(__file__).resolve().parents[1]  # the repository
DEFENSES = ROOT / "benchmarks" / "defenses.py"
BITS = 3  # the paper's weight-only quantization
REPORT_EPS = [0.0, 0.05, 0.1, 0.15]
MODELS = {"Orig.": "orig", "Adv.": "adv", "F.L.": "fl"}  # the files defenses.py --save-models writes


def main(argv=None) -> None:
    started = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Every other option is passed to benchmarks/defenses.py.")
    parser.add_argument("--quick", action="store_true", help="short training, small slices (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-only", action="store_true", help="only train (or load) the benchmark's models")
    args, _ = parser.parse_known_args(argv)

    with tempfile.TemporaryDirectory() as models_dir:
        # the table: the defenses benchmark, which publishes benchmarks/results/defenses[_quick].{json,md}
        command = [sys.executable, str(DEFENSES), *argv, "--command", "python examples/reproduce_song2020.py",
                   "--save-models", models_dir]
        if (returncode := subprocess.run(command).returncode) != 0:
            sys.exit(returncode)
        if args.train_only:
            return
        models = {row: kq.load_model(Path(models_dir) / f"{stem}.keras") for row, stem in MODELS.items()}
    published = ROOT / "benchmarks" / "results" / ("defenses_quick" if args.quick else "defenses")
    data = json.loads(published.with_suffix(".json").read_text())
    table = published.with_suffix(".md").read_text()

    log("Lipschitz of the quantization error per layer, and the accuracy curves")
    x_test, y_test = kq.datasets.load("fashion_mnist", "test")
    n = 200 if args.quick else 1000
    report = kq.evaluate(models, (x_test[:n], y_test[:n]), attacks=["fgsm", "pgd"], eps=REPORT_EPS, seed=args.seed,
                         lipschitz_bits=BITS, verbose=0)
    folder = ROOT / "examples" / "results" / ("song2020_quick" if args.quick else "song2020")
    report.save(folder, overwrite=True)
    write_text(folder / "table.md", table, overwrite=True)
    write_json(folder / "table.json", data, overwrite=True)
    for name, rows in report.lipschitz.items():
        values = ", ".join(f"{r['layer']} {r['sigma_max']:.3f}" for r in rows)
        print(f"σ_max(Q_{BITS}(W) − W), {name}: {values}")
    print(f"wrote {folder}/report.{{html,md,json}} and table.{{md,json}}; "
          f"runtime {(time.perf_counter() - started) / 60:.1f} min on {data['machine']['cpus']} CPUs")


if __name__ == "__main__":
    main()
