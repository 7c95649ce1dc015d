"""Scale-out: guard's attack grid on 1 and 2 Ray workers, and a projection to more (issue 23).

The grid is the one `guard` runs in its attack stage (keras_qrobust.guard.attacking): for the
float model and each candidate, PGD and its own UAP at ε/2 and ε, and AutoAttack (``fast``) at
ε — each attack of each model a task (``attack_tasks``: 5 per model, AutoAttack first), run by
``keras_qrobust.executor.run_tasks``. The model is the demo's robust cnn_small
(benchmarks/checkpoints); the candidates are RobustQuantizer PTQ copies at w8a8, w6a6, w5a5,
w4a4, w3a3 and w2a2 (7 models, 35 tasks),
calibrated on 512 fit-split images, each attacked through its TFLite integer twin as guard does
for its default target; inputs are the first ``--images`` Fashion-MNIST test images
(AutoAttack on the first ``--autoattack-images``), L∞ ε = 0.1.

Measured: the wall time of the grid in one process (local: TensorFlow uses every core), on a
Ray instance with 1 worker CPU and with 2 (each task reserves one CPU and its TensorFlow uses one
thread: ``executor.run_tasks(cpus_per_task=1)``), the results of each compared with those of the
same grid run locally in a child process whose TensorFlow uses one thread, like a Ray task's
(they must be identical: TensorFlow's CPU kernels split their sums by thread count, so logits
differ in the last bits between 1 and 2 threads — up to 1.9e-6 for this cnn_small — and an
attack can end differently on a near-tie; whether the every-core local run matches too is
reported beside it), each task's time inside its worker, and the bytes of each
model's saved file (the models and inputs go to Ray's object store once per run; a worker loads
each model once). Ray's start-up — the instance, then each worker warmed by one task that
imports TensorFlow, loads every model and builds each candidate's twin — is timed separately,
and the speed-up with it counted is reported beside the grid's.

Projection (stated as one, not measured): the grid's wall time on W workers as the longest
chain of tasks when the measured task times are dealt to W workers longest first, plus the
measured per-run overhead. The longest task (one model's AutoAttack) bounds the grid: more
workers than that allows do not help, and the projection shows it instead of extrapolating.

Target (issue 23): speed-up ≥ 1.8× on 2 workers with identical results. The 1- and 2-worker
runs are interleaved (``--repeats`` pairs, default 8), each pair giving one speed-up; the
speed-up is their geometric mean, stated with a 95% t-interval over the pairs (the same grid
varies by 20% between runs on a shared virtual machine, so one pair does not decide it). Each
run also records the CPU time the hypervisor gave to other guests (steal, from /proc/stat)
and how busy the CPUs were just before it started.

    ./run.sh bench scale            # writes benchmarks/results/scale.{json,md}
    ./run.sh bench scale --quick    # 100 images, AutoAttack on 50: a smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import keras_qrobust as kq
from _common import CHECKPOINTS, machine, publish
from keras_qrobust.bench import log, run_description, targets_table
from keras_qrobust.executor import run_tasks, ship, ship_models, start_ray, unship
from keras_qrobust.guard.attacking import attack_cell, attack_tasks, attacked_model, model_results

EPS = 0.1
SETTINGS = ("w8a8", "w6a6", "w5a5", "w4a4", "w3a3", "w2a2")
TARGET = "tflite-int8"  # guard's default: each candidate is attacked through its TFLite integer twin
DEMO_CHECKPOINT = CHECKPOINTS / ("fashion_mnist_cnn_small_e15_s0_fit_dropout0.0_attacktrades_beta3.0_eps0.1_steps7_"
                                 "lrdrop_ema0.999.keras")
TARGET_SPEEDUP = 1.8
PROJECTED_WORKERS = (1, 2, 4, 8, 32, 128)
DEFAULTS = {"images": 250, "autoattack_images": 125, "uap_images": 125, "repeats": 8}


def timed_cell(shared: dict, name: str, kind: str, column: int) -> dict:
    """One of guard's attack tasks, with its time inside the worker."""
    started = time.perf_counter()
    result = attack_cell(shared, name, kind, column)
    return {"result": result, "seconds": time.perf_counter() - started}


def grid(models: dict, args) -> dict:
    x_test, y_test = kq.datasets.load("fashion_mnist", "test")
    x_fit, _ = kq.datasets.load("fashion_mnist", "fit")
    x, y = x_test[:args.images], y_test[:args.images]
    return {"x": x, "y": y, "x_craft": x_fit[:args.uap_images], "columns": [EPS / 2, EPS], "seed": 0, "pgd_steps": 10,
            "x_aa": x[:args.autoattack_images], "y_aa": y[:args.autoattack_images], "eps": EPS, "version": "fast",
            "trust": False, "target": TARGET}


def warm(shared: dict) -> None:
    """This process made ready for the grid: every model loaded and, as guard does for its
    target, each candidate's integer twin built (both kept per process), so no task pays them."""
    for payload in shared["models"].values():
        attacked_model(unship(payload, shared["trust"]), shared["target"])


def warm_worker(shared: dict, index: int) -> int:
    """A Ray worker made ready for the grid (:func:`warm`), one op run so TensorFlow's thread
    pools exist."""
    warm(shared)
    kq.tf.constant(0.0).numpy()
    time.sleep(1.0)  # still busy when the other warm-up task is placed: each lands on its own worker
    return index


def cpu_ticks() -> tuple[int, int, int]:
    """(steal, idle, all) clock ticks of every CPU since boot (Linux /proc/stat; zeros elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0, 0, 0
    return (fields[7] if len(fields) > 7 else 0), fields[3] + fields[4], sum(fields[:8])


def tick_share(before: tuple[int, int, int], after: tuple[int, int, int], field: int) -> float | None:
    """The share of all CPU ticks between two :func:`cpu_ticks` that went to ``field`` (0 steal, 1 idle)."""
    total = after[2] - before[2]
    return (after[field] - before[field]) / total if total > 0 else None


def busy_before(seconds: float = 2.0) -> float | None:
    """The share of CPU time something else used over ``seconds`` before a run (0 when idle)."""
    before = cpu_ticks()
    time.sleep(seconds)
    idle = tick_share(before, cpu_ticks(), 1)
    return None if idle is None else round(1 - idle, 3)


def steal_fraction(before: tuple[int, int, int], after: tuple[int, int, int]) -> float | None:
    """The share of CPU time the hypervisor gave to other guests between two :func:`cpu_ticks`."""
    steal = tick_share(before, after, 0)
    return None if steal is None else round(steal, 4)


def geometric_interval(ratios: list[float]) -> tuple[float, float | None, float | None]:
    """Geometric mean of ``ratios`` and its 95% t-interval (on their logarithms; None for one)."""
    from scipy import stats

    logs = np.log(ratios)
    mean = float(np.exp(logs.mean()))
    if len(logs) < 2:
        return round(mean, 3), None, None
    half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs))
    return round(mean, 3), round(float(np.exp(logs.mean() - half)), 3), round(float(np.exp(logs.mean() + half)), 3)


def run_once(models: dict, shared: dict, executor: str, cpus: int | None) -> tuple[dict, float, float]:
    """Results, grid seconds and Ray start-up seconds (instance, then its workers warmed) of one run."""
    import ray

    startup = 0.0
    shipped = ship_models(models, executor)
    if executor == "ray":
        started = time.perf_counter()
        start_ray(num_cpus=cpus)
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # benchmarks/ is not a package
        run_tasks(warm_worker, {f"warm|{i}": (i,) for i in range(cpus)}, shared={**shared, "models": shipped},
                  executor=executor)
        startup = time.perf_counter() - started
    else:
        warm({**shared, "models": shipped})
    started = time.perf_counter()
    try:
        results = run_tasks(timed_cell, attack_tasks(list(models), shared["columns"]),
                            shared={**shared, "models": shipped}, executor=executor)
    finally:
        if executor == "ray":
            ray.shutdown()
    return results, time.perf_counter() - started, startup


def _as_data(results: dict) -> dict:
    """Each task's result as JSON data (what crosses a process boundary)."""
    return json.loads(json.dumps({key: r["result"] for key, r in results.items()}))


def same_numbers(a: dict, b: dict) -> bool:
    return _as_data(a) == _as_data(b)


def one_thread_reference(models: dict, args) -> dict:
    """The grid run locally in a child process whose TensorFlow uses one thread (the models
    passed as saved files, so both processes attack the same weights)."""
    with tempfile.TemporaryDirectory() as folder:
        for name, model in models.items():
            model.save(Path(folder) / f"{name}.keras")
        out = Path(folder) / "results.json"
        subprocess.run([sys.executable, __file__, "--one-thread-reference", folder, "--images", str(args.images),
                        "--autoattack-images", str(args.autoattack_images), "--uap-images", str(args.uap_images)],
                       check=True)
        return {key: {"result": value} for key, value in json.loads(out.read_text()).items()}


def _reference_child(folder: Path, args) -> None:
    kq.tf.config.threading.set_intra_op_parallelism_threads(1)  # before TensorFlow runs anything
    kq.tf.config.threading.set_inter_op_parallelism_threads(1)
    names = ["fp32", *SETTINGS]
    models = {name: kq.load_model(folder / f"{name}.keras") for name in names}
    shared = grid(models, args)
    warm({**shared, "models": models})
    results = run_tasks(timed_cell, attack_tasks(names, shared["columns"]), shared={**shared, "models": models})
    (folder / "results.json").write_text(json.dumps(_as_data(results)))


def projection(task_seconds: list[float], overhead: float) -> dict:
    """Longest-first dealing of the measured task times to W workers, plus the per-run overhead."""
    out = {}
    for workers in PROJECTED_WORKERS:
        loads = [0.0] * workers
        for seconds in sorted(task_seconds, reverse=True):
            loads[int(np.argmin(loads))] += seconds
        out[str(workers)] = round(max(loads) + overhead, 1)
    return out


def run(args) -> dict:
    float_model = kq.load_model(DEMO_CHECKPOINT)
    x_fit, _ = kq.datasets.load("fashion_mnist", "fit")
    calibration = x_fit[np.random.default_rng(0).choice(len(x_fit), 512, replace=False)]
    models = {"fp32": float_model}
    models.update({s: kq.RobustQuantizer.from_setting(s, input_weight_bits=8).quantize(float_model, calibration)
                   for s in SETTINGS})
    shared = grid(models, args)
    runs = {}
    plan = [("local", "local", None)] + [(label, "ray", cpus) for _ in range(args.repeats)
                                          for label, cpus in (("ray, 1 worker", 1), ("ray, 2 workers", 2))]
    for label, executor, cpus in plan:  # the Ray runs interleaved, so a drift of the machine hits both
        busy, ticks = busy_before(), cpu_ticks()
        results, seconds, startup = run_once(models, shared, executor, cpus)
        row = runs.setdefault(label, {"results": [], "seconds": [], "ray_start_seconds": []})
        row["results"].append(results)
        row["seconds"].append(round(seconds, 1))
        row["ray_start_seconds"].append(round(startup, 1))
        row.setdefault("task_seconds_sum", []).append(round(sum(r["seconds"] for r in results.values()), 1))
        row.setdefault("steal", []).append(steal_fraction(ticks, cpu_ticks()))
        row.setdefault("busy_before", []).append(busy)
        log(f"{label}: {seconds:.1f} s (+ {startup:.1f} s Ray start-up)")
    local = one_thread_reference(models, args)
    every_core_local = runs["local"]["results"][0]
    task_seconds = {key: round(r["seconds"], 1) for key, r in runs["ray, 2 workers"]["results"][-1].items()}
    model_seconds = {name: round(sum(v for k, v in task_seconds.items() if k.split("|")[0] == name), 1)
                     for name in models}
    robust = model_results({k: r["result"] for k, r in every_core_local.items()}, list(models), shared["columns"])
    payload = {name: len(ship(model)[1]) for name, model in models.items()}
    shared_bytes = sum(np.asarray(shared[k]).nbytes for k in ("x", "y", "x_craft", "x_aa", "y_aa"))
    speedups = [round(one / two, 3) for one, two in zip(runs["ray, 1 worker"]["seconds"],
                                                        runs["ray, 2 workers"]["seconds"])]
    with_startup = [round((one + s1) / (two + s2), 3) for one, s1, two, s2 in zip(
        runs["ray, 1 worker"]["seconds"], runs["ray, 1 worker"]["ray_start_seconds"],
        runs["ray, 2 workers"]["seconds"], runs["ray, 2 workers"]["ray_start_seconds"])]
    two = runs["ray, 2 workers"]["seconds"][-1]
    overhead = max(0.0, two - projection(list(task_seconds.values()), 0.0)["2"])  # start of workers, shipping
    command = "./run.sh bench scale" + (" --quick" if args.quick else "".join(
        f" --{name.replace('_', '-')} {getattr(args, name)}" for name, default in DEFAULTS.items()
        if getattr(args, name) != default))
    summary = {label: {"seconds": r["seconds"], "ray_start_seconds": r["ray_start_seconds"],
                       "task_seconds_sum": r["task_seconds_sum"], "steal": r["steal"],
                       "busy_before": r["busy_before"],
                       "identical_to_local": all(same_numbers(results, local) for results in r["results"])}
               for label, r in runs.items()}
    summary["local"]["identical_to_local"] = same_numbers(every_core_local, local)  # reported, not a target
    mean, low, high = geometric_interval(speedups)
    return {"command": command, "machine": machine(), "eps": EPS, "images": args.images,
            "autoattack_images": args.autoattack_images, "uap_images": args.uap_images, "models": list(models),
            "runs": summary, "repeats": args.repeats, "speedup_2_workers": speedups,
            "speedup_2_workers_mean": {"geometric_mean": mean, "ci95": [low, high]},
            "speedup_2_workers_with_startup": with_startup, "task_seconds": task_seconds,
            "model_seconds": model_seconds,
            "bytes_per_model": payload, "shared_bytes_per_run": int(shared_bytes),
            "projection_seconds": projection(list(task_seconds.values()), overhead),
            "projection_overhead_seconds": round(overhead, 1),
            "robust_accuracy": {n: robust[n]["autoattack"]["robust_accuracy"] for n in models},
            "checks": [{"check": f"speed-up on 2 workers ≥ {TARGET_SPEEDUP}× (geometric mean of the "
                                 f"{len(speedups)} interleaved pairs)",
                        "value": f"{mean:.2f}×" + (f" (95% interval {low:.2f}–{high:.2f}×)" if low else ""),
                        "passed": mean >= TARGET_SPEEDUP},
                       {"check": "Ray results identical to the local run", "value": ", ".join(
                           f"{k}: {v['identical_to_local']}" for k, v in summary.items() if k != "local"),
                        "passed": all(v["identical_to_local"] for k, v in summary.items() if k != "local")}]}


def efficiency(data: dict) -> list[float]:
    """Per 2-worker run, the share of its two workers' wall time spent in tasks: measured within
    one run, so unlike a speed-up it does not compare runs made at different machine speeds."""
    row = data["runs"]["ray, 2 workers"]
    return [tasks / (2 * wall) for tasks, wall in zip(row["task_seconds_sum"], row["seconds"])]


def _spread(data: dict) -> str:
    """The pairs' geometric mean with its interval, how much the same run varied, and the steal."""
    one, two = data["runs"]["ray, 1 worker"]["seconds"], data["runs"]["ray, 2 workers"]["seconds"]
    if len(one) < 2:
        return ""
    mean = data.get("speedup_2_workers_mean") or {}
    low, high = mean.get("ci95", (None, None))
    text = (f"Geometric mean of the {len(one)} pairs: {mean.get('geometric_mean')}×, 95% t-interval "
            f"{low}–{high}× ({'above' if low >= TARGET_SPEEDUP else 'not clear of'} {TARGET_SPEEDUP}×). "
            if low else "")
    text += (f"The same 1-worker run took {min(one)}–{max(one)} s ({max(one) / min(one) - 1:.0%} apart) and the "
             f"2-worker run {min(two)}–{max(two)} s ({max(two) / min(two) - 1:.0%}). ")
    in_tasks = efficiency(data)
    text += (f"Within each 2-worker run, whatever the machine's speed then, the workers were busy with tasks "
             f"{min(in_tasks):.1%}–{max(in_tasks):.1%} of the grid's wall time (the tasks' seconds over 2 × the "
             "wall time): the rest is scheduling and shipping. ")
    steal = [v for row in data["runs"].values() for v in row.get("steal", []) if v is not None]
    if steal:
        busy = [v for row in data["runs"].values() for v in row.get("busy_before", []) if v is not None]
        text += (f"CPU time the hypervisor gave to other guests (steal) during a run: at most {max(steal):.2%}; "
                 f"CPU busy with other work in the 2 s before a run: at most {max(busy):.0%}. ")
    return text


def markdown(data: dict) -> str:
    one, two = data["runs"]["ray, 1 worker"]["task_seconds_sum"], data["runs"]["ray, 2 workers"]["task_seconds_sum"]
    slowdown = round(sum(two) / sum(one), 3)
    lines = ["# Scale-out: guard's attack grid on Ray", "",
             f"{run_description(data)} Code {data['machine'].get('code', 'unknown')}. {len(data['models'])} models "
             f"({', '.join(data['models'])}) of the demo's cnn_small; per model PGD-10 and UAP at ε/2 and ε on "
             f"{data['images']} test images, AutoAttack fast at ε = {data['eps']} on {data['autoattack_images']}.", "",
             "Local: one process, TensorFlow on every core; Ray: each task reserves one CPU and runs "
             "TensorFlow on one thread. \"Identical\" compares every task's result with the same grid run "
             "locally with TensorFlow on one thread, like a Ray task (TensorFlow's CPU kernels give different "
             "last bits on different thread counts; the local every-core run's row says whether it matched "
             "anyway).", "",
             "| run | grid seconds (each repeat) | sum of the tasks' seconds | Ray start-up seconds | "
             "identical to the 1-thread local run |", "|---|---|---|---|---|"]
    for label, row in data["runs"].items():
        lines.append(f"| {label} | {', '.join(map(str, row['seconds']))} | "
                     f"{', '.join(map(str, row['task_seconds_sum']))} | "
                     f"{', '.join(map(str, row['ray_start_seconds']))} | {row['identical_to_local']} |")
    lines += ["", f"Speed-up on 2 workers over 1, per repeat (1- and 2-worker runs interleaved): "
              f"{', '.join(f'{v}×' for v in data['speedup_2_workers'])}. The same tasks take longer when two run "
              "at once on this machine's two CPUs (shared caches, memory bandwidth): the sum of the tasks' seconds "
              f"inside their workers is {slowdown} × that of the 1-worker run, which bounds the speed-up at "
              f"2 / that = {2 / slowdown:.2f}× before any idle time. With Ray's start-up counted (the instance, then "
              "each worker warmed: TensorFlow imported, every model loaded and each candidate's integer twin built "
              "once — a cost per run and worker, not per task), the speed-up is "
              f"{', '.join(f'{v}×' for v in data.get('speedup_2_workers_with_startup', []))}. "
              f"{_spread(data)}Task seconds below: the last 2-worker run.", "",
              "| model | AutoAttack task s | UAP tasks s (ε/2, ε) | PGD tasks s (ε/2, ε) | all its tasks s | "
              "bytes sent (its saved model) |", "|---|---|---|---|---|---|"]
    tasks = data["task_seconds"]
    for name, seconds in data["model_seconds"].items():
        uap = ", ".join(str(tasks[f"{name}|uap|{c}"]) for c in range(2))
        pgd = ", ".join(str(tasks[f"{name}|pgd|{c}"]) for c in range(2))
        lines.append(f"| {name} | {tasks[f'{name}|autoattack']} | {uap} | {pgd} | {seconds} | "
                     f"{data['bytes_per_model'][name]:,} |")
    lines += ["", f"Inputs sent once per run to Ray's object store: {data['shared_bytes_per_run']:,} bytes.", "",
              "Projection (not measured): the measured task times dealt longest first to W workers, plus "
              f"{data['projection_overhead_seconds']} s of measured per-run overhead. The longest task (one model's "
              "AutoAttack) bounds the grid: beyond the workers that bound allows, it cannot go faster without "
              "sharding AutoAttack over the test set.",
              "", "| workers | projected seconds |", "|---|---|"]
    lines += [f"| {w} | {s} |" for w, s in data["projection_seconds"].items()]
    lines += ["", *targets_table(data["checks"])]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=DEFAULTS["images"])
    parser.add_argument("--autoattack-images", type=int, default=DEFAULTS["autoattack_images"])
    parser.add_argument("--uap-images", type=int, default=DEFAULTS["uap_images"])
    parser.add_argument("--repeats", type=int, default=DEFAULTS["repeats"], help="Ray runs of each size (default: 8)")
    parser.add_argument("--quick", action="store_true")
    # the child process of one_thread_reference
    parser.add_argument("--one-thread-reference", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.images, args.autoattack_images, args.uap_images = 100, 50, 100
    if args.one_thread_reference:
        _reference_child(args.one_thread_reference, args)
        return
    data = run(args)
    publish("scale", args.quick, data, markdown(data))


if __name__ == "__main__":
    main()
