"""End to end: ``keras-qrobust guard`` on a tiny case, killed after the quantize stage and
resumed, against an uninterrupted run with the same seed."""

import json
import signal

import pytest
from _guard_runs import guard_args, log_events

from keras_qrobust import cli
from keras_qrobust.guard import STAGES
from keras_qrobust.guard.config import GuardConfig
from keras_qrobust.guard.context import Context
from keras_qrobust.inputs import Data
from keras_qrobust.guard.stages import choose_stage
from keras_qrobust.guard.state import RunState

REPORTS = ("report.json", "report.md", "report.html")


def test_the_killed_run_stopped_right_after_the_quantize_checkpoint(guard_runs):
    assert guard_runs["killed"].returncode == -signal.SIGKILL
    assert list(guard_runs["state_after_kill"]["stages"]) == ["train", "quantize"]
    assert set(guard_runs["state_after_kill"]["stages"]["quantize"]["artifacts"]) == {"w8a8", "w4a4"}


def test_the_rerun_resumed_after_the_finished_stages(guard_runs):
    second = guard_runs["second"]
    assert second.returncode == 0, second.stderr[-2000:]
    events = log_events(guard_runs["resumed"])
    first_run = [(e["event"], e.get("stage")) for e in events if e["run"] == 1]
    second_run = [(e["event"], e.get("stage")) for e in events if e["run"] == 2]
    assert ("finished", "quantize") in first_run and ("begin", "attack") not in first_run
    assert second_run[0] == ("start", None)
    assert second_run[1:3] == [("reused", "train"), ("reused", "quantize")]
    assert [s for e, s in second_run if e == "begin"] == list(STAGES)[2:]
    assert "resuming" in second.stderr


def test_resumed_and_uninterrupted_reports_are_byte_identical(guard_runs):
    assert guard_runs["uninterrupted"].returncode == 0, guard_runs["uninterrupted"].stderr[-2000:]
    resumed, straight = guard_runs["resumed"], guard_runs["straight"]
    for name in REPORTS:
        assert (resumed / name).read_bytes() == (straight / name).read_bytes(), name
    plots = sorted(p.name for p in (straight / "plots").iterdir())
    assert plots and plots == sorted(p.name for p in (resumed / "plots").iterdir())
    for name in plots:
        assert (resumed / "plots" / name).read_bytes() == (straight / "plots" / name).read_bytes(), name


def test_the_output_folder_holds_the_chosen_and_exported_models_and_the_report(guard_runs):
    folder = guard_runs["straight"]
    report = json.loads((folder / "report.json").read_text())
    chosen = json.loads((folder / "guard_state.json").read_text())["stages"]["choose"]["summary"]["chosen"]
    assert chosen in ("w8a8", "w4a4")
    assert (folder / f"chosen_{chosen}.keras").is_file() and (folder / f"chosen_{chosen}.tflite").is_file()
    assert set(report["accuracy"]) == {"fp32", "w8a8", "w4a4", f"{chosen} exported (tflite-int8)"}
    assert report["attacks"] == ["pgd", "uap", "ensemble_uap", "transfer"]
    assert [s["title"] for s in report["sections"]][:4] == ["Decision", "Deployed file vs attacked model", "Guard run",
                                                            "Choice (Zhou 2022, Algorithm 1)"]
    decision = report["sections"][0]
    assert decision["lead"] and decision["markdown"].startswith(f"**Chosen: {chosen}**")
    assert [p["name"] for p in report["tradeoff"]] == ["fp32", "w8a8", "w4a4"]
    sizes = {p["name"]: p["bytes"] for p in report["tradeoff"]}
    assert sizes["fp32"] > sizes["w8a8"] > sizes["w4a4"]  # weights at their bit width
    html = (folder / "report.html").read_text()
    assert html.index("<div id='decision'>") < html.index("<h2>Plots</h2>") < html.index("pgd — accuracy %")
    remeasure = json.loads((folder / "guard_state.json").read_text())["stages"]["remeasure"]["summary"]
    # the attack stage attacked each candidate's integer twin: the file computes it bit for bit
    assert remeasure["agreement"] == 1.0 and remeasure["max_score_difference"] == 0.0
    twins = json.loads((folder / "guard_state.json").read_text())["stages"]["attack"]["summary"]["integer_twins"]
    assert set(twins) == {"w8a8", "w4a4"} and all(twin["exact"] for twin in twins.values())
    assert report["sections"][1]["markdown"].startswith("The exported file computes the attacked model: top-1 "
                                                        f"agreement of the exported file with the attacked Keras "
                                                        f"model: {100 * remeasure['agreement']:.2f}%")
    assert "seconds" not in json.dumps(report["provenance"])
    # the exported file was re-measured in its runtime: on the same inputs, the twin's accuracies exactly
    exported = report["accuracy"][f"{chosen} exported (tflite-int8)"]
    assert exported["pgd"] == report["accuracy"][chosen]["pgd"]
    # the tiny model is not robust, so guard measured it and trained it
    train = json.loads((folder / "guard_state.json").read_text())["stages"]["train"]["summary"]
    assert train["trained"] and train["robust_check"]["pgd"] < 0.5 * train["robust_check"]["clean"]


def test_rerunning_a_finished_run_points_at_the_report(guard_runs, capsys):
    folder = guard_runs["straight"]
    before = {name: (folder / name).read_bytes() for name in REPORTS}
    assert cli.main(guard_args(guard_runs["model"], guard_runs["data"], folder)) == 0
    assert str(folder / "report.html") in capsys.readouterr().err
    assert before == {name: (folder / name).read_bytes() for name in REPORTS}


def test_other_arguments_into_the_same_folder_are_refused(guard_runs, capsys):
    folder = guard_runs["straight"]
    state = (folder / "guard_state.json").read_bytes()
    assert cli.main(guard_args(guard_runs["model"], guard_runs["data"], folder, "--eps", "0.2")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other arguments" in err and "eps: 0.1 before, 0.2 now" in err
    assert (folder / "guard_state.json").read_bytes() == state


def _choose_context(tmp_path, floor):
    args = cli._build_parser().parse_args(["guard", "--model", "m.keras", "--candidates", "w8a8,w4a4",
                                           *(["--floor", str(floor)] if floor is not None else [])])
    config = GuardConfig.from_args(args)
    grid = {name: {a: [clean, 0.5, adv] for a in ("pgd", "uap", "ensemble_uap", "transfer")}
            for name, clean, adv in (("fp32", 0.90, 0.30), ("w8a8", 0.89, 0.30), ("w4a4", 0.86, 0.40))}
    grid["w8a8"]["uap"][-1] = 0.10  # the worst case decides
    state = RunState(tmp_path, config.to_dict(), {})
    state.stages["attack"] = {"artifacts": {}, "summary": {"grid": grid}}
    (tmp_path / "candidates").mkdir()
    (tmp_path / "candidates" / "w4a4.keras").write_bytes(b"model")
    state.stages["quantize"] = {"artifacts": {"w4a4": "candidates/w4a4.keras"}, "summary": {}}
    return Context(config, Data("d", None, None, None, None), state)


@pytest.mark.parametrize("floor, chosen", [(None, "w4a4"), (0.895, None), (0.8, "w4a4")])
def test_choose_is_algorithm_1_on_the_worst_case_accuracy(tmp_path, floor, chosen):
    artifacts, summary = choose_stage(_choose_context(tmp_path, floor))
    assert summary["chosen"] == chosen
    assert summary["floor"] == pytest.approx(0.85 if floor is None else floor)
    assert [r["adversarial"] for r in summary["rows"]] == [0.10, 0.40]
    if chosen:
        assert (tmp_path / artifacts["model"]).read_bytes() == b"model"
    else:
        assert artifacts == {}


def test_a_finished_run_without_a_candidate_above_the_floor_exits_1(tiny_case, tmp_path, capsys):
    from keras_qrobust.guard.pipeline import _inputs

    model, data = tiny_case
    args = guard_args(model, data, tmp_path / "out", "--floor", "0.99")
    config = GuardConfig.from_args(cli._build_parser().parse_args(args))
    state = RunState(tmp_path / "out", config.to_dict(), _inputs(config))
    (tmp_path / "out").mkdir()
    state.finish("choose", {}, {"chosen": None, "floor": 0.99, "rows": []})
    state.finish("report", {}, {})
    assert cli.main(args) == 1
    assert "no candidate has clean accuracy above the floor 99.00%" in capsys.readouterr().out


@pytest.mark.parametrize("allow", [False, True])
def test_an_exported_file_that_disagrees_with_the_attacked_model_fails_the_run(tiny_case, tmp_path, capsys, allow):
    from keras_qrobust.guard.pipeline import _inputs

    model, data = tiny_case
    args = guard_args(model, data, tmp_path / "out")
    config = GuardConfig.from_args(cli._build_parser().parse_args(args))
    state = RunState(tmp_path / "out", config.to_dict(), _inputs(config))
    (tmp_path / "out").mkdir()
    state.finish("attack", {}, {})
    state.finish("choose", {}, {"chosen": "w4a4", "floor": 0.5, "rows": [
        {"setting": "w4a4", "natural": 0.8, "adversarial": 0.4}]})
    state.finish("export", {}, {"file": "chosen_w4a4.tflite"})
    state.finish("remeasure", {}, {"row": {"pgd": [0.7, 0.3]}, "agreement": 0.9, "agreement_inputs": 200,
                                   "max_score_difference": 1.5, "output_step": 0.1})
    state.finish("report", {}, {})
    code = cli.main(args + (["--allow-mismatch"] if allow else []))
    out = capsys.readouterr().out
    assert "agrees with the attacked Keras model on only 90.00% of the test inputs (< 99.5%)" in out
    assert (code, "MISMATCH accepted" in out) == ((0, True) if allow else (1, False))


def test_the_report_marks_a_mismatch_at_the_top():
    from keras_qrobust.guard.reporting import agreement_verdict

    verdict = agreement_verdict({"agreement": 0.9, "agreement_inputs": 200, "max_score_difference": 1.5,
                                 "output_step": 0.1})
    assert verdict.startswith("**MISMATCH**: top-1 agreement of the exported file with the attacked Keras model: "
                              "90.00% of 200 test inputs, largest score difference 1.5 (15.0 output steps), below "
                              "99.5%")
