"""Try a task, headless: `workbench try` and workbench.core.tryatask with the bundled demo models, odd and hostile
inputs, save/load/export, and the demo models on real Omniglot characters of alphabets they never saw."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_data import png_header_only
from workbench.core.checkpoints import read_checkpoint
from workbench.core.runs import load_model
from workbench.core.data.glyphs import DEFAULT_PARAMS, render_glyph
from workbench.core.errors import CheckpointError
from workbench.core.tryatask import (DEFAULT_DEMO, DEMO_DIR, DEMO_MODELS, STROKE_FRAMES, Task, TaskError, TaskImage,
                                     bundled_models, classify, orient, resolve_model_source, stroke_frame)
from workbench.tryatask.cli import main as try_main

TEST_CLASSES = DEFAULT_PARAMS.split_class_ranges()["test"]
# Two test-split characters of different alphabets (40 characters per alphabet), never seen in training.
CLASS_A, CLASS_B = TEST_CLASSES[0], TEST_CLASSES[40 + 7]
SUPPORT_SAMPLES = (0, 1, 2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo_model():
    return load_model(resolve_model_source("demo"))


def write_glyph(path: Path, class_id: int, sample: int, size: int = 56) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_glyph(class_id, sample, size=size)).save(path)
    return path


def glyph_support(root: Path, classes=(CLASS_A, CLASS_B)) -> list[str]:
    """NAME=DIR arguments, one folder of glyph drawings per class."""
    args = []
    for class_id in classes:
        for sample in SUPPORT_SAMPLES:
            write_glyph(root / f"c{class_id}" / f"s{sample}.png", class_id, sample)
        args.append(f"c{class_id}={root / f'c{class_id}'}")
    return args


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = try_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def predictions_of(out: str) -> list[dict]:
    return json.loads(out)["predictions"]


# --- the bundled models -------------------------------------------------------------------------------------

def test_bundled_demo_models_exist_and_load():
    models = bundled_models()
    assert list(models) == list(DEMO_MODELS)  # every declared model ships
    for name, path in models.items():
        assert path.parent == DEMO_DIR and path.stat().st_size < 2_000_000
        loaded = load_model(path)  # the normal path: torch.load(weights_only=True) and the checksum
        assert loaded.spec.channels == 1 and loaded.spec.foreground == "dark"
        trained_on = name.rsplit("-", 1)[1]
        assert loaded.config.dataset.name == trained_on and stroke_frame(loaded) == STROKE_FRAMES[trained_on]
    # The default demo knows real handwriting; the glyph models stay available by name.
    assert DEFAULT_DEMO == "protonet-omniglot"
    assert resolve_model_source("demo") == models["protonet-omniglot"]
    assert resolve_model_source("protonet-glyphs") == models["protonet-glyphs"]
    assert resolve_model_source("some-run-id") == "some-run-id"


# --- CLI ----------------------------------------------------------------------------------------------------

def test_cli_json_classifies_fresh_glyphs_in_query_order(tmp_path, capsys):
    support = glyph_support(tmp_path / "support")
    # Queries interleaved so the order check means something.
    queries = [write_glyph(tmp_path / "q" / f"{c}-{s}.png", c, s) for s in (11, 15) for c in (CLASS_B, CLASS_A)]
    code, out, err = run_cli(capsys, "demo", "--support", *support, "--query", *queries, "--json", "--seed", "3")
    assert code == 0, err
    predictions = predictions_of(out)
    assert [p["query"] for p in predictions] == [str(q) for q in queries]
    for prediction, query in zip(predictions, queries):
        assert prediction["predicted"] == f"c{query.stem.split('-')[0]}"
        assert set(prediction["probabilities"]) == {f"c{CLASS_A}", f"c{CLASS_B}"}
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    again = run_cli(capsys, DEFAULT_DEMO, "--support", *support, "--query", *queries, "--json", "--seed", "3")
    assert predictions_of(again[1]) == predictions  # "demo" is the default model, deterministic for a seed


def test_cli_maml_is_deterministic_for_a_seed(tmp_path, capsys):
    if "maml-glyphs" not in bundled_models():
        pytest.skip("the MAML demo model is not bundled")
    support = glyph_support(tmp_path / "support")
    queries = [write_glyph(tmp_path / "q" / f"{c}.png", c, 12) for c in (CLASS_A, CLASS_B)]
    runs = [run_cli(capsys, "maml-glyphs", "--support", *support, "--query", *queries, "--json", "--seed", "5")
            for _ in range(2)]
    assert runs[0][0] == 0, runs[0][2]
    assert predictions_of(runs[0][1]) == predictions_of(runs[1][1])
    assert [p["predicted"] for p in predictions_of(runs[0][1])] == [f"c{CLASS_A}", f"c{CLASS_B}"]


def test_cli_table_without_json(tmp_path, capsys):
    support = glyph_support(tmp_path / "support")
    query = write_glyph(tmp_path / "query.png", CLASS_B, 9)
    code, out, err = run_cli(capsys, "demo", "--support", *support, "--query", query)
    assert code == 0, err
    header, row = out.strip().splitlines()
    assert "predicted" in header and f"c{CLASS_A}" in header and f"c{CLASS_B}" in header
    assert str(query) in row and f"c{CLASS_B}" in row.split()[1] and "%" in row


def test_cli_rejects_a_malformed_support_argument(tmp_path, capsys):
    query = write_glyph(tmp_path / "query.png", CLASS_B, 9)
    code, _, err = run_cli(capsys, "demo", "--support", "no-equals-sign", "--query", query)
    assert code == 2 and "NAME=DIR" in err
    code, _, err = run_cli(capsys, "demo", "--query", query)  # argparse's usage error returns, not exits
    assert code == 2 and "--support" in err


def test_workbench_try_goes_through_the_main_cli(tmp_path, capsys):
    from workbench import cli

    support = glyph_support(tmp_path / "support")
    query = write_glyph(tmp_path / "query.png", CLASS_A, 8)
    code = cli.main(["try", "demo", "--support", *support, "--query", str(query), "--json"])
    out = capsys.readouterr().out
    assert code == 0 and predictions_of(out)[0]["predicted"] == f"c{CLASS_A}"


# --- odd and bad images -------------------------------------------------------------------------------------

def _glyph_image(class_id: int, sample: int) -> Image.Image:
    return Image.fromarray(render_glyph(class_id, sample, size=56))


def odd_but_valid_files(folder: Path, class_id: int, sample: int) -> list[Path]:
    """The same glyph as a 16-bit PNG, RGBA, CMYK JPEG, palette PNG and animated GIF (first frame)."""
    folder.mkdir(parents=True, exist_ok=True)
    gray = _glyph_image(class_id, sample)
    paths = []
    sixteen = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)
    sixteen.save(folder / "sixteen.png")
    rgba = Image.new("RGBA", gray.size, (0, 0, 0, 0))  # transparent where the paper is
    rgba.putalpha(Image.fromarray(255 - np.asarray(gray)))
    rgba.save(folder / "rgba.png")
    assert Image.open(folder / "sixteen.png").mode.startswith("I")
    gray.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    gray.convert("P").save(folder / "palette.png")
    other = Image.new("L", gray.size, 255)  # a second, blank frame that must be ignored
    gray.save(folder / "animated.gif", save_all=True, append_images=[other], duration=100, loop=0)
    for name in ("sixteen.png", "rgba.png", "cmyk.jpg", "palette.png", "animated.gif"):
        paths.append(folder / name)
    assert Image.open(folder / "cmyk.jpg").mode == "CMYK" and Image.open(folder / "animated.gif").n_frames == 2
    return paths


def bad_files(folder: Path) -> dict[Path, str]:
    """Files that must be reported (name + reason) and skipped, with a word the reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes.png"
    text.write_text("not an image at all")
    readme = folder / "readme.txt"
    readme.write_text("hello")
    full = folder / "full.png"
    _glyph_image(CLASS_A, 5).save(full)
    truncated = folder / "truncated.png"
    truncated.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    jpeg = folder / "corrupt.jpg"
    _glyph_image(CLASS_A, 5).convert("RGB").save(jpeg, quality=90)
    data = bytearray(jpeg.read_bytes())
    data[len(data) // 3:] = b"\x00" * (len(data) - len(data) // 3)
    jpeg.write_bytes(bytes(data[: len(data) * 2 // 3]))
    bomb = folder / "bomb.png"
    bomb.write_bytes(png_header_only(12_000, 12_000))
    full.unlink()
    return {text: "not an image", readme: "not an image", truncated: "truncated", jpeg: "",
            bomb: "too large"}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_odd_formats_work_and_bad_files_are_reported_while_the_rest_is_used(tmp_path, capsys):
    support = glyph_support(tmp_path / "support")
    bad = bad_files(tmp_path / "support" / f"c{CLASS_A}")  # bad files among class A's good support images
    odd = odd_but_valid_files(tmp_path / "odd", CLASS_B, 13)
    bad_queries = bad_files(tmp_path / "badq")
    good_query = write_glyph(tmp_path / "good.png", CLASS_A, 14)
    queries = [*odd, *bad_queries, good_query]
    code, out, err = run_cli(capsys, "demo", "--support", *support, "--query", *queries, "--json")
    assert code == 0, err
    predictions = predictions_of(out)
    assert [p["query"] for p in predictions] == [str(p) for p in [*odd, good_query]]
    assert [p["predicted"] for p in predictions] == [f"c{CLASS_B}"] * len(odd) + [f"c{CLASS_A}"]
    skipped = {item["file"]: item["reason"] for item in json.loads(out)["skipped"]}
    for path, word in [*bad.items(), *bad_queries.items()]:
        assert str(path) in skipped, f"{path} was not reported"
        assert word in skipped[str(path)]
        assert f"skipped {path}: " in err


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_unreadable_queries_are_each_named_with_their_reason(tmp_path, capsys, demo_model):
    bad = bad_files(tmp_path / "queries")
    empty = tmp_path / "queries" / "empty.png"
    empty.write_bytes(b"")
    bad[empty] = "empty"
    task = task_with_glyphs()
    task.queries.clear()
    task.add_query_files(list(bad))
    with pytest.raises(TaskError) as info:
        classify(demo_model, task)
    message = str(info.value)
    assert f"none of the {len(bad)} queries could be read" in message
    for path, word in bad.items():
        assert f"{path}: " in message and word in message, path
    assert {label for label, _ in info.value.problems} == {str(p) for p in bad}
    # The CLI puts each file on its own line, then the error.
    support = glyph_support(tmp_path / "support")
    code, out, err = run_cli(capsys, "demo", "--support", *support, "--query", *bad)
    assert code == 2 and not out
    for path, word in bad.items():
        line = next(line for line in err.splitlines() if line.startswith(f"skipped {path}: "))
        assert word in line
    assert err.strip().splitlines()[-1] == f"error: none of the {len(bad)} queries could be read"


def test_orient_inverts_light_on_dark_drawings():
    dark_on_light = render_glyph(CLASS_A, 0)[:, :, None]
    assert np.array_equal(orient(dark_on_light, "dark"), dark_on_light)
    assert np.array_equal(orient(255 - dark_on_light, "dark"), dark_on_light)
    assert np.array_equal(orient(dark_on_light, "light"), 255 - dark_on_light)
    assert np.array_equal(orient(255 - dark_on_light, "natural"), 255 - dark_on_light)
    assert np.array_equal(orient(255 - dark_on_light, "natural", drawn=True), dark_on_light)


def task_with_glyphs(classes=(CLASS_A, CLASS_B), query_samples=(16,)) -> Task:
    task = Task()
    for class_id in classes:
        task.add_class(f"c{class_id}")
        task.add_support(f"c{class_id}", [TaskImage.from_array(render_glyph(class_id, s, size=56), f"s{s}.png",
                                                               drawn=True) for s in SUPPORT_SAMPLES])
    for class_id in classes:
        task.add_queries([TaskImage.from_array(render_glyph(class_id, s, size=56), f"q{class_id}-{s}.png")
                          for s in query_samples])
    return task


def test_light_on_dark_query_is_classified_like_the_original(demo_model):
    task = task_with_glyphs()
    original = classify(demo_model, task).predictions
    for image in task.queries:
        pixels = np.asarray(Image.open(io.BytesIO(image.data)))
        image.data = TaskImage.from_array(255 - pixels, image.name).data
    inverted = classify(demo_model, task).predictions
    for a, b in zip(original, inverted):
        assert a.predicted == b.predicted
        assert a.probabilities == pytest.approx(b.probabilities, abs=0.02)


def test_empty_class_is_left_out_with_a_message(tmp_path, capsys, demo_model):
    task = task_with_glyphs()
    task.add_class("empty")
    result = classify(demo_model, task)
    assert result.classes == [f"c{CLASS_A}", f"c{CLASS_B}"]
    assert ("class 'empty'", "it has no support images; it is left out") in result.problems
    assert [p.predicted for p in result.predictions] == result.classes
    (tmp_path / "empty").mkdir()
    support = glyph_support(tmp_path / "support")
    query = write_glyph(tmp_path / "q.png", CLASS_A, 17)
    code, out, err = run_cli(capsys, "demo", "--support", *support, f"nothing={tmp_path / 'empty'}", "--query",
                             query, "--json")
    assert code == 0 and "class 'nothing'" in err and "no support images" in err
    assert predictions_of(out)[0]["predicted"] == f"c{CLASS_A}"


def test_queries_before_any_support_and_too_few_classes(demo_model, tmp_path, capsys):
    task = Task()
    task.add_class("a")
    task.add_class("b")
    task.add_queries([TaskImage.from_array(render_glyph(CLASS_A, 0), "q.png")])
    with pytest.raises(TaskError, match="at least two classes"):
        classify(demo_model, task)
    task.add_support("a", [TaskImage.from_array(render_glyph(CLASS_A, 1), "s.png")])
    with pytest.raises(TaskError, match="at least two classes"):
        classify(demo_model, task)
    task.add_support("b", [TaskImage.from_array(render_glyph(CLASS_B, 1), "s.png")])
    task.queries.clear()
    with pytest.raises(TaskError, match="add a query"):
        classify(demo_model, task)
    support = glyph_support(tmp_path / "support", classes=(CLASS_A,))
    code, _, err = run_cli(capsys, "demo", "--support", *support, "--query", write_glyph(tmp_path / "q.png", CLASS_A, 3))
    assert code == 2 and "at least two classes" in err


def test_class_names_are_checked():
    task = Task()
    task.add_class("cat")
    with pytest.raises(TaskError, match="already"):
        task.add_class("cat")
    with pytest.raises(TaskError, match="cannot contain"):
        task.add_class("a/b")
    task.add_class("dog")
    task.rename_class("dog", "wolf")
    with pytest.raises(TaskError, match="already"):
        task.rename_class("wolf", "cat")
    task.remove_class("cat")
    assert task.class_names() == ["wolf"]


# --- bad checkpoints ----------------------------------------------------------------------------------------

class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited-marker",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_bad_checkpoints_are_refused_with_the_file_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    support = glyph_support(tmp_path / "support")
    query = write_glyph(tmp_path / "q.png", CLASS_A, 4)
    other_arch = read_checkpoint(resolve_model_source("demo"))
    other_arch["config"]["algorithm"]["hparams"]["hidden"] = 32  # format 2 keeps hparams in the run's config
    torch.save(other_arch, tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("this is not a checkpoint")
    torch.save({"format": 1, "x": _Exploit()}, tmp_path / "evil.pt")
    with open(tmp_path / "evil-pickle.pt", "wb") as handle:  # a bare pickle, not torch.save's zip format
        pickle.dump({"format": 1, "x": _Exploit()}, handle)
    expected = {"other.pt": "do not match", "text.pt": "not a workbench checkpoint", "evil.pt": "refused",
                "evil-pickle.pt": "not a workbench checkpoint"}
    for name, reason in expected.items():
        code, out, err = run_cli(capsys, tmp_path / name, "--support", *support, "--query", query, "--json")
        assert code == 2 and out == ""
        assert str(tmp_path / name) in err and reason in err, err
    assert not (tmp_path / "exploited-marker").exists()
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "other.pt")


# --- save, load, export, correct -----------------------------------------------------------------------------

def test_save_load_export_and_correction(tmp_path, demo_model):
    task = task_with_glyphs(query_samples=(16, 18))
    task.add_query_files([write_glyph(tmp_path / "file-query.png", CLASS_B, 19)])
    before = classify(demo_model, task, seed=1)
    task.save(tmp_path / "task")
    loaded = Task.load(tmp_path / "task")
    assert loaded.class_names() == task.class_names()
    assert [len(c.images) for c in loaded.classes] == [len(c.images) for c in task.classes]
    assert [c.images[0].drawn for c in loaded.classes] == [True, True]
    after = classify(demo_model, loaded, seed=1)
    assert [p.probabilities for p in after.predictions] == [p.probabilities for p in before.predictions]

    exported = loaded.export_dataset(tmp_path / "dataset")
    assert sorted(p.name for p in exported.iterdir()) == sorted(task.class_names())
    assert all(len(list((exported / name).glob("*.png"))) == len(SUPPORT_SAMPLES) for name in task.class_names())
    with pytest.raises(TaskError, match="empty or new folder"):
        loaded.export_dataset(tmp_path / "dataset")

    moved = loaded.correct(0, f"c{CLASS_B}")
    assert moved in loaded.get_class(f"c{CLASS_B}").images and moved not in loaded.queries
    with pytest.raises(TaskError, match="not a saved task"):
        Task.load(tmp_path / "dataset")


# --- transfer to real Omniglot ------------------------------------------------------------------------------

@pytest.mark.parametrize("model, at_least", [("demo", 0.9), ("protonet-glyphs", 0.6)])
def test_demo_models_classify_omniglot_evaluation_characters(omniglot_root, tmp_path, capsys, model, at_least):
    """5-way 1-shot tasks from Omniglot alphabets never trained on, through `workbench try`: the default demo
    (trained on the background alphabets) and the glyph-trained one (generated glyphs only)."""
    evaluation = omniglot_root / "images_evaluation"
    alphabets = sorted(p for p in evaluation.iterdir() if p.is_dir())[:3]
    correct = total = 0
    for alphabet in alphabets:
        characters = sorted(p for p in alphabet.iterdir() if p.is_dir())[:5]
        support, queries, truth = [], [], []
        for character in characters:
            drawings = sorted(character.glob("*.png"))
            folder = tmp_path / alphabet.name / character.name
            folder.mkdir(parents=True)
            shutil.copy(drawings[0], folder)
            support.append(f"{character.name}={folder}")
            queries.extend(drawings[1:6])
            truth.extend([character.name] * len(drawings[1:6]))
        code, out, err = run_cli(capsys, model, "--support", *support, "--query", *queries, "--json")
        assert code == 0, err
        predicted = [p["predicted"] for p in predictions_of(out)]
        correct += sum(p == t for p, t in zip(predicted, truth))
        total += len(truth)
    assert total == 75
    # Chance is 20%.
    assert correct / total >= at_least, f"{model}: {correct}/{total}"


def test_pca_of_groups_is_the_probes_pca_split_back_into_the_groups():
    from workbench.core import probes
    from workbench.core.tryatask import pca_2d

    rng = np.random.default_rng(1)
    support, prototypes, queries = rng.normal(size=(6, 8)), rng.normal(size=(3, 8)), rng.normal(size=(9, 8))
    projected = pca_2d(support, prototypes, None, queries)
    assert [p.shape for p in projected] == [(6, 2), (3, 2), (0, 2), (9, 2)]
    expected, _ = probes.pca_2d(np.concatenate([support, prototypes, queries]))
    assert np.allclose(np.concatenate(projected), expected)
    assert np.allclose(pca_2d(support[:1])[0], 0.0)  # one point sits at the origin
    with pytest.raises(ValueError, match="empty"):
        pca_2d(np.zeros((0, 8)), None)


def _image_algorithms() -> list[str]:
    from workbench.core.algorithms import algorithm_names, get_algorithm

    return [name for name in algorithm_names() if get_algorithm(name).supports("classification")]


@pytest.mark.parametrize("name", _image_algorithms())
def test_every_image_algorithm_tries_a_task_with_three_classes(name):
    """'Try a task' works with each algorithm of the catalogue: adapt to drawn supports, classify the queries (with
    embeddings and an adaptation trace where it declares them)."""
    from workbench.core.algorithms import get_algorithm
    from workbench.core.checkpoints import LoadedModel
    from workbench.core.data.base import PreprocessSpec
    from workbench.core.models.spec import ModelSpec

    cls = get_algorithm(name)
    hparams = cls.build_hparams({"hidden": 8} if "hidden" in {s.name for s in cls.hparam_specs()} else {})
    spec = PreprocessSpec(28, 1, (0.92,), (0.22,))
    algorithm = cls(hparams, ModelSpec(1, 28, 5, 12, kind="classification"))
    model = LoadedModel(algorithm.eval(), spec, None, {"step": 0})
    task = Task()
    for class_id in (CLASS_A, CLASS_B, CLASS_A + 7):
        task.add_class(f"c{class_id}")
        task.add_support(f"c{class_id}", [TaskImage.from_array(render_glyph(class_id, s, size=28), f"{class_id}-{s}")
                                          for s in SUPPORT_SAMPLES[:2]])
    task.add_queries([TaskImage.from_array(render_glyph(CLASS_B, 9, size=28), "query")])
    result = classify(model, task, embeddings=cls.has("embeddings"),
                      trace_steps=2 if cls.has("adaptation") else None)
    [prediction] = result.predictions
    assert prediction.predicted in task.class_names() and result.classes == task.class_names()
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    if cls.has("embeddings"):
        assert result.query_embeddings is not None and len(result.query_embeddings) == 1
