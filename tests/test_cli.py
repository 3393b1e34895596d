"""The `workbench` command, run in-process: JSON output, flag/config equivalence, errors and exit codes."""

from __future__ import annotations

import json
import signal
import types

import pytest

from conftest import synthetic_dataset
from workbench import cli
from workbench.core.runs import RunStore

TINY_FLAGS = ["--image-size", "16", "--ways", "3", "--shots", "1", "--queries", "2", "--steps", "4",
              "--val-interval", "2", "--val-episodes", "3", "--checkpoint-interval", "2", "--eval-episodes", "4",
              "--device", "cpu", "--threads", "1", "--hparam", "hidden=8"]


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_json(out: str):
    """stdout must hold exactly one JSON object (one line)."""
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    return json.loads(lines[0])


@pytest.fixture
def trained_run(capsys, use_synthetic_data):
    code, out, err = run_cli(capsys, "train", *TINY_FLAGS, "--json", "--quiet")
    assert code == 0, err
    return one_json(out)


def test_train_json_prints_one_object_with_the_run(capsys, use_synthetic_data):
    code, out, err = run_cli(capsys, "train", *TINY_FLAGS, "--json", "--name", "cli run")
    assert code == 0, err
    result = one_json(out)
    assert result["status"] == "finished" and result["steps"] == 4
    assert 0 <= result["best_val_accuracy"] <= 1
    assert result["test"]["episodes"] == 4 and 0 <= result["test"]["accuracy"] <= 1 and result["test"]["ci95"] >= 0
    run = RunStore().get(result["run"])
    assert str(run.path) == result["path"]
    assert run.record().name == "cli run" and run.record().test_accuracy == pytest.approx(result["test"]["accuracy"])
    assert result["run"] in err  # progress and messages go to stderr
    assert "validation at step 2" in err


def test_train_no_eval_skips_the_test(capsys, use_synthetic_data):
    code, out, err = run_cli(capsys, "train", *TINY_FLAGS, "--json", "--no-eval", "--quiet")
    assert code == 0 and one_json(out)["test"] is None
    assert err == "" or "error" not in err


def test_eval_json_at_another_way_and_shot(capsys, trained_run):
    code, out, err = run_cli(capsys, "eval", trained_run["run"], "--episodes", "5", "--ways", "4", "--shots", "2",
                             "--queries", "2", "--device", "cpu", "--json")
    assert code == 0, err
    result = one_json(out)
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["ci95"] <= 1.0
    assert (result["ways"], result["shots"], result["episodes"], result["run"]) == (4, 2, 5, trained_run["run"])
    assert result["per_class"] and all(0 <= v <= 1 for v in result["per_class"].values())
    code, out, err = run_cli(capsys, "eval", trained_run["run"][:22], "--episodes", "3", "--checkpoint", "last",
                             "--device", "cpu")
    assert code == 0 and "last checkpoint" in out and "3-way 1-shot" in out
    checkpoint_file = RunStore().get(trained_run["run"]).checkpoint_path("best")
    code, out, err = run_cli(capsys, "eval", str(checkpoint_file), "--episodes", "3", "--device", "cpu", "--json")
    assert code == 0 and one_json(out)["episodes"] == 3
    code, out, err = run_cli(capsys, "eval", trained_run["run"], "--ways", "0")
    assert code == 2 and "error: ways: 0 is too small" in err


def test_eval_merges_algorithm_extras(capsys, trained_run, monkeypatch):
    from workbench.core.algorithms.protonet import ProtoNet

    monkeypatch.setattr(ProtoNet, "evaluation_extras", lambda self, episodes: {"weights": [[0.1, 0.9]]},
                        raising=False)
    code, out, err = run_cli(capsys, "eval", trained_run["run"], "--episodes", "2", "--device", "cpu", "--json")
    assert code == 0 and one_json(out)["weights"] == [[0.1, 0.9]]


@pytest.mark.parametrize("argv, field, hint", [
    (["--steps", "-1"], "training.steps", "use a value between 0 and"),
    (["--steps", "0"], "training.steps", "set a number of steps or a budget (--max-minutes)"),
    (["--lr", "fast"], "training.lr", "expected float"),
    (["--ways", "1"], "dataset.ways", "between 2 and"),
    (["--device", "tpu"], "training.device", "not allowed"),
    (["--hparam", "hidden=2"], "algorithm.hparams.hidden", "between 8 and"),
    (["--hparam", "nonsense=2"], "algorithm.hparams.nonsense", "unknown setting"),
    (["--algorithm", "magic"], "algorithm.name", "unknown algorithm"),
    (["--set", "training.stepz=3"], "training.stepz", "unknown setting"),
    (["--set", "oops"], "--set", "expected KEY=VALUE"),
    (["--dataset", "omniglot"], "dataset.root", "--data-root"),
])
def test_bad_values_exit_2_naming_the_field(capsys, argv, field, hint):
    code, out, err = run_cli(capsys, "train", *argv)
    assert code == 2
    assert err.startswith(f"error: {field}: ") and hint in err
    assert "Traceback" not in err and out == ""
    assert RunStore().list() == []


def test_bad_config_file_names_the_file(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\nsteps = 3\n")
    code, out, err = run_cli(capsys, "train", "--config", str(bad))
    assert code == 2 and str(bad) in err and "not valid TOML" in err
    code, out, err = run_cli(capsys, "train", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "cannot read the config file" in err


def test_exported_config_trains_exactly_like_the_flags(capsys, tmp_path, use_synthetic_data):
    exported = tmp_path / "exp.toml"
    flags = [*TINY_FLAGS, "--lr", "0.002", "--max-minutes", "10", "--set", "training.lr_schedule=constant",
             "--rotations"]
    code, out, err = run_cli(capsys, "train", *flags, "--export-config", str(exported))
    assert code == 0 and exported.is_file() and out == ""
    assert not RunStore().list()  # exporting does not train
    code, out, err = run_cli(capsys, "train", *flags, "--json", "--no-eval", "--quiet")
    from_flags = RunStore().get(one_json(out)["run"])
    code, out, err = run_cli(capsys, "train", "--config", str(exported), "--json", "--no-eval", "--quiet")
    from_file = RunStore().get(one_json(out)["run"])
    assert from_file.config_path.read_text() == from_flags.config_path.read_text() == exported.read_text()
    config = from_file.config
    assert (config.training.lr, config.training.max_minutes, config.training.lr_schedule) == (0.002, 10.0, "constant")
    assert config.dataset.rotations is True and config.algorithm.hparams["hidden"] == 8
    # Flags override the file.
    code, out, err = run_cli(capsys, "train", "--config", str(exported), "--steps", "9", "--export-config", "-")
    assert code == 0 and "steps = 9" in out and "lr = 0.002" in out


def test_data_root_becomes_absolute(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "omni").mkdir()
    code, out, err = run_cli(capsys, "train", "--dataset", "omniglot", "--data-root", "omni", "--export-config", "-")
    assert code == 0 and f'root = "{tmp_path / "omni"}"' in out


def test_algorithms_and_datasets_json(capsys):
    from workbench.core.data import CATALOG

    code, out, err = run_cli(capsys, "algorithms", "--json")
    algorithms = one_json(out)
    protonet = next(a for a in algorithms if a["name"] == "protonet")
    assert protonet["family"] == "metric" and protonet["description"] and protonet["hparams"]
    code, out, err = run_cli(capsys, "datasets", "--json")
    datasets = one_json(out)
    assert [d["name"] for d in datasets] == list(CATALOG)
    assert all(d["description"] and "needs_root" in d for d in datasets)
    code, out, err = run_cli(capsys, "algorithms")
    assert code == 0 and "Metric-based" in out and "protonet" in out


def test_runs_list_show_rename_resume_delete(capsys, trained_run):
    run_id = trained_run["run"]
    code, out, err = run_cli(capsys, "runs", "--json")
    assert [r["id"] for r in one_json(out)] == [run_id]
    code, out, err = run_cli(capsys, "runs")
    assert code == 0 and run_id in out and "STATUS" in out
    code, out, err = run_cli(capsys, "runs", "rename", run_id, "baseline")
    assert code == 0
    code, out, err = run_cli(capsys, "runs", "show", "baseline", "--json")
    shown = one_json(out)
    assert shown["id"] == run_id and shown["name"] == "baseline" and shown["evaluations"]
    assert [v["step"] for v in shown["validations"]] == [2, 4]
    code, out, err = run_cli(capsys, "runs", "resume", "baseline", "--steps", "6", "--no-eval", "--json", "--quiet")
    assert code == 0, err
    resumed = one_json(out)
    assert (resumed["run"], resumed["steps"], resumed["status"]) == (run_id, 6, "finished")
    code, out, err = run_cli(capsys, "runs", "resume", "baseline")
    assert code == 2 and "already trained all 6 steps" in err
    code, out, err = run_cli(capsys, "runs", "delete", run_id)  # stdin is not a terminal: needs --yes
    assert code == 2 and "--yes" in err
    code, out, err = run_cli(capsys, "runs", "delete", run_id, "--yes")
    assert code == 0 and RunStore().list() == []
    code, out, err = run_cli(capsys, "runs", "show", run_id)
    assert code == 2 and err.startswith("error: no run")


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_stops_cleanly_and_saves(capsys, use_synthetic_data, monkeypatch, signum, exit_code):
    from workbench.core.algorithms.protonet import ProtoNet

    real_step = ProtoNet.meta_train_step
    calls = {"n": 0}

    def step_then_signal(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            signal.raise_signal(signum)
        return real_step(self, batch)

    monkeypatch.setattr(ProtoNet, "meta_train_step", step_then_signal)
    previous = signal.getsignal(signum)
    code, out, err = run_cli(capsys, "train", *TINY_FLAGS, "--steps", "50", "--json")
    assert signal.getsignal(signum) is previous  # handler restored
    assert code == exit_code
    result = one_json(out)
    assert result["status"] == "stopped" and result["steps"] == 2 and result["test"] is None
    assert f"workbench runs resume {result['run']}" in err
    assert RunStore().get(result["run"]).load_checkpoint("last")["step"] == 2


def test_unexpected_errors_exit_1_with_a_traceback(capsys, monkeypatch):
    import workbench.core.algorithms as algorithms

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(algorithms, "algorithms_by_family", broken)
    code, out, err = run_cli(capsys, "algorithms")
    assert code == 1 and "Traceback" in err and "RuntimeError: boom" in err


def test_no_command_opens_the_gui_when_available(capsys, monkeypatch):
    seen = {}
    fake_app = types.SimpleNamespace(main=lambda argv: seen.setdefault("argv", argv) and 0 or 0)
    monkeypatch.setattr(cli, "_load_gui_app", lambda: fake_app)
    assert cli.main([]) == 0 and seen["argv"] == []


def test_no_command_without_gui_runs_the_demo(capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "_load_gui_app", lambda: None)
    monkeypatch.setattr(cli, "cmd_demo", lambda args: calls.append(args.steps) or 0)
    assert cli.main([]) == 0 and calls == [300]
    assert "running the demo" in capsys.readouterr().err


def test_no_command_without_a_display_runs_the_demo(capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(cli.sys, "platform", "linux")
    for name in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli, "_load_gui_app", lambda: pytest.fail("must not open an invisible window"))
    monkeypatch.setattr(cli, "cmd_demo", lambda args: calls.append(args.steps) or 0)
    assert cli.main([]) == 0 and calls == [300]
    err = capsys.readouterr().err
    assert "no display found" in err and "QT_QPA_PLATFORM=offscreen" in err and "xvfb-run" in err


def test_demo_trains_and_evaluates(capsys, monkeypatch):
    from workbench.core import data

    dataset = synthetic_dataset(val_classes=6, test_classes=6, per_class=17)
    monkeypatch.setattr(data, "load_dataset", lambda config, progress=None, use_cache=True: dataset)
    code, out, err = run_cli(capsys, "demo", "--steps", "2", "--episodes", "3", "--threads", "1", "--json",
                             "--quiet")
    assert code == 0, err
    result = one_json(out)
    assert result["ways"] == 5 and result["episodes"] == 3 and 0 <= result["accuracy"] <= 1


@pytest.mark.parametrize("command, module", [("tour", "workbench.gui.tour"), ("try", "workbench.tryatask.cli")])
def test_tour_and_try_delegate_or_explain(capsys, monkeypatch, command, module):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real_find_spec(name, *a))
    code, out, err = run_cli(capsys, command, "--anything")
    assert code == 2 and "not available" in err and module in err
    fake = types.ModuleType(module)
    fake.main = lambda argv: 0 if argv == ["--anything"] else 5
    monkeypatch.setitem(__import__("sys").modules, module, fake)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == module else real_find_spec(name, *a))
    assert cli.main([command, "--anything"]) == 0


def test_help_and_version(capsys):
    assert cli.main(["--version"]) == 0
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--data-root" in out and "--max-minutes" in out and "training.max_minutes" in out
    assert cli.main(["bogus-command"]) == 2


def _image_folder(root, classes: int = 15, per_class: int = 6, size: int = 16):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True)
        pattern = rng.integers(0, 256, (4, 4))
        for i in range(per_class):
            pixels = np.kron(pattern, np.ones((size // 4, size // 4))) + rng.normal(0, 20, (size, size))
            Image.fromarray(pixels.clip(0, 255).astype("uint8"), "L").save(folder / f"{i}.png")
    return root


def test_sigterm_to_a_training_process_saves_every_step_and_prints_json(tmp_path):
    import subprocess
    import sys
    import time

    from workbench.core.checkpoints import read_checkpoint

    root = _image_folder(tmp_path / "images")
    command = [sys.executable, "-m", "workbench", "train", "--dataset", "folder", "--data-root", str(root),
               "--image-size", "16", "--ways", "3", "--shots", "1", "--queries", "2", "--steps", "100000",
               "--val-interval", "0", "--checkpoint-interval", "100000", "--device", "cpu", "--threads", "1",
               "--hparam", "hidden=8", "--json", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = RunStore()
    deadline = time.monotonic() + 120
    try:
        # Wait (polling the disk) until metrics past step 5 are written: the only checkpoint is step 0's.
        while time.monotonic() < deadline and process.poll() is None:
            records = store.list()
            metrics = store.run(records[0].id).read_metrics() if records else []
            if any(m["event"] == "step" and m["step"] > 5 for m in metrics):
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, err.decode()
    result = json.loads(out.decode())
    assert result["status"] == "stopped" and result["steps"] > 5
    assert f"stopped; resume with: workbench runs resume {result['run']}" in err.decode()
    run = store.get(result["run"])
    assert read_checkpoint(run.checkpoint_path("last"))["step"] == result["steps"]
    assert run.record().status == "stopped"


@pytest.mark.slow
def test_a_killed_training_process_resumes_from_its_last_checkpoint(capsys, tmp_path):
    import subprocess
    import sys
    import time

    from workbench.core.checkpoints import read_checkpoint

    root = _image_folder(tmp_path / "images")
    command = [sys.executable, "-m", "workbench", "train", "--dataset", "folder", "--data-root", str(root),
               "--image-size", "16", "--ways", "3", "--shots", "1", "--queries", "2", "--steps", "100000",
               "--val-interval", "0", "--checkpoint-interval", "5", "--device", "cpu", "--threads", "1",
               "--hparam", "hidden=8", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = RunStore()
    checkpoint_step = 0
    deadline = time.monotonic() + 120
    try:
        # Wait (polling the disk) until the run has written a checkpoint past step 0.
        while checkpoint_step < 10 and time.monotonic() < deadline and process.poll() is None:
            records = store.list()
            if records and store.run(records[0].id).has_checkpoint("last"):
                checkpoint_step = read_checkpoint(store.run(records[0].id).checkpoint_path("last"))["step"]
            time.sleep(0.05)
    finally:
        process.kill()
        _, stderr = process.communicate(timeout=30)
    assert checkpoint_step >= 10, stderr.decode()
    [record] = store.list()
    # The index said "running" when the process died; the store notices the process is gone.
    assert record.status == "stopped" and "ended unexpectedly" in record.message
    assert f"workbench runs resume {record.id}" in record.message
    saved_step = read_checkpoint(store.run(record.id).checkpoint_path("last"))["step"]
    code, out, err = run_cli(capsys, "runs", "resume", record.id, "--steps", str(saved_step + 3), "--no-eval",
                             "--json", "--quiet")
    assert code == 0, err
    result = one_json(out)
    assert (result["steps"], result["status"]) == (saved_step + 3, "finished")
    steps = [m["step"] for m in store.run(record.id).read_metrics() if m["event"] == "step"]
    assert steps == list(range(1, saved_step + 4))


def _bad_image_files(folder) -> dict:
    """Unreadable files of every sort in ``folder``, with a word their reason must contain."""
    import io

    from PIL import Image

    from fixtures_data import png_header_only

    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).save(buffer, "PNG")
    png = buffer.getvalue()
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()
    files = {"truncated.png": (png[: len(png) // 2], "truncated"), "cut.jpg": (jpeg[: len(jpeg) // 3], "truncated"),
             "notes.png": (b"just some text, not an image", "not an image"), "empty.png": (b"", "empty"),
             "bomb.png": (png_header_only(12_000, 12_000), "too large")}
    expected = {}
    for name, (content, word) in files.items():
        (folder / name).write_bytes(content)
        expected[str(folder / name)] = word
    return expected


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_train_on_a_folder_reports_skipped_files_and_left_out_folders(capsys, tmp_path):
    root = _image_folder(tmp_path / "data")
    bad = _bad_image_files(root / "class00")
    bad.update(_bad_image_files(root / "unreadable"))  # a class folder of unreadable files only
    (root / "empty").mkdir()
    flags = ["train", "--dataset", "folder", "--data-root", str(root), *TINY_FLAGS, "--steps", "2", "--no-eval",
             "--json", "--quiet"]
    code, out, err = run_cli(capsys, *flags)
    assert code == 0, err
    result = one_json(out)
    assert {item["path"]: item["reason"] for item in result["skipped"]}.keys() == bad.keys()
    for item in result["skipped"]:
        assert bad[item["path"]] in item["reason"], item
    listing = f"{result['path']}/skipped_files.txt"
    assert f"warning: skipped {len(bad)} files that could not be read; see {listing} for the full list:" in err
    assert sum(line.startswith(f"  {root}") for line in err.splitlines()) == 5  # the first few, with reasons
    assert f"... and {len(bad) - 5} more" in err
    with open(listing, encoding="utf-8") as handle:
        assert dict(line.rstrip("\n").split("\t", 1) for line in handle) == {i["path"]: i["reason"]
                                                                              for i in result["skipped"]}
    assert "'empty'" in err and "the folder is empty" in err
    assert "'unreadable'" in err and "none of its 5 image file(s) could be read" in err
    assert any("'empty'" in line for line in result["warnings"])
    # A second load comes from the disk cache and reports the same files and folders.
    code, out, err_again = run_cli(capsys, *flags)
    again = one_json(out)
    assert again["skipped"] == result["skipped"] and again["warnings"] == result["warnings"]


def test_eval_on_another_dataset_and_a_channel_mismatch(capsys, tmp_path, monkeypatch):
    from fixtures_data import make_class_folders

    train_root = _image_folder(tmp_path / "a")
    other = _image_folder(tmp_path / "b", classes=12, per_class=5)
    code, out, err = run_cli(capsys, "train", "--dataset", "folder", "--data-root", str(train_root), *TINY_FLAGS,
                             "--steps", "2", "--no-eval", "--json", "--quiet")
    assert code == 0, err
    run_id = one_json(out)["run"]
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "eval", run_id, "--data-root", "b", "--episodes", "3", "--json", "--quiet")
    assert code == 0, err
    result = one_json(out)
    assert result["dataset"] == "folder" and result["ways"] == 3 and result["episodes"] == 3
    assert result["evaluated_on"] == {"dataset": "folder", "root": str(other), "trained_on": "folder"}
    code, out, err = run_cli(capsys, "eval", run_id, "--data-root", "b", "--episodes", "3", "--quiet")
    assert code == 0 and f"tested on folder ({other}); trained on folder" in out
    saved = RunStore().get(run_id).evaluations()
    assert len(saved) == 1 and "-on-folder-" in saved[0]["file"]
    assert RunStore().get(run_id).record().test_accuracy is None  # the run's own test columns stay empty
    rgb = tmp_path / "rgb"
    make_class_folders(rgb, {f"c{c:02d}": 4 for c in range(12)})  # colour images: 3 channels
    code, out, err = run_cli(capsys, "eval", run_id, "--data-root", str(rgb), "--episodes", "3", "--quiet")
    assert code == 2 and "1-channel" in err and "3-channel" in err
    code, out, err = run_cli(capsys, "eval", run_id, "--dataset", "no-such-data", "--quiet")
    assert code == 2 and "unknown dataset 'no-such-data'" in err


def test_steps_progress_names_runs_that_train_until_their_budget():
    from workbench.cli import steps_progress

    assert steps_progress(120, 500) == "120/500 steps"
    assert steps_progress(2670, 0) == "2,670 steps (until the budget)"
    assert steps_progress(2670, 0, compact=True) == "2,670 (budget)"
    assert steps_progress(1400, 2000, compact=True) == "1,400/2,000"
