"""Image folder datasets: layouts, validation before training and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_data import class_color, make_class_folders, make_split_folders, write_corrupt_png
from workbench.core.config import DatasetConfig
from workbench.core.data import load_dataset
from workbench.core.data.folder import load, validate_folder
from workbench.core.errors import DatasetError, EpisodeError


def config(root, **kwargs) -> DatasetConfig:
    values = {"name": "folder", "root": str(root), "ways": 2, "shots": 1, "queries": 2, "image_size": 16}
    values.update(kwargs)
    return DatasetConfig(**values)


def all_classes(dataset) -> list[str]:
    return [c for split in dataset.splits.values() for c in split.class_names]


def test_flat_class_folders_split_by_ratio(tmp_path):
    make_class_folders(tmp_path, {f"class{i:02d}": 4 for i in range(30)})
    dataset = load_dataset(config(tmp_path), use_cache=False)
    assert [dataset.splits[s].num_classes for s in ("train", "val", "test")] == [18, 6, 6]
    assert sorted(all_classes(dataset)) == [f"class{i:02d}" for i in range(30)]
    assert "60/20/20" in dataset.description
    # The same seed gives the same split; another seed another split.
    again = load(config(tmp_path))
    assert again.splits["test"].class_names == dataset.splits["test"].class_names
    others = {tuple(load(config(tmp_path, split_seed=s)).splits["test"].class_names) for s in range(1, 6)}
    assert len(others | {tuple(dataset.splits["test"].class_names)}) > 1


def test_images_and_labels_match(tmp_path):
    counts = {"red": 3, "green": 4, "blue": 5, "grey": 3, "pink": 3, "teal": 6}
    colors = make_class_folders(tmp_path, counts, suffix=".jpg")
    dataset = load(config(tmp_path, image_size=0))
    assert dataset.spec.image_size == 84 and dataset.spec.channels == 3
    assert dataset.spec.foreground == "natural"
    for split in dataset.splits.values():
        assert split.images.shape[1:] == (3, 84, 84) and split.images.dtype == torch.uint8
        for label, name in enumerate(split.class_names):
            rows = split.images[split.labels == label]
            expected = torch.tensor(class_color(colors[name]), dtype=torch.float32)
            assert torch.allclose(rows[:, :, 42, 42].float(), expected.expand(len(rows), 3), atol=6)
            assert len(rows) == counts[name]


def test_train_val_test_subfolders(tmp_path):
    make_split_folders(tmp_path, {"train": {"a": 3, "b": 3, "c": 3}, "val": {"d": 3, "e": 3},
                                  "test": {"f": 3, "g": 3}})
    dataset = load(config(tmp_path))
    assert dataset.splits["train"].class_names == ["a", "b", "c"]
    assert dataset.splits["val"].class_names == ["d", "e"]
    assert dataset.splits["test"].class_names == ["f", "g"]
    assert "train/val/test subfolders" in dataset.description


def test_missing_val_folder_is_carved_from_train(tmp_path):
    make_split_folders(tmp_path, {"train": {f"t{i}": 3 for i in range(8)}, "test": {"x": 3, "y": 3}})
    dataset = load(config(tmp_path))
    assert dataset.splits["val"].num_classes == 2 and dataset.splits["train"].num_classes == 6
    assert set(dataset.splits["val"].class_names) <= {f"t{i}" for i in range(8)}
    dataset.check_disjoint()


def test_ratio_split_can_be_forced_over_subfolders(tmp_path):
    make_split_folders(tmp_path, {"train": {f"t{i}": 3 for i in range(6)}, "val": {"v": 3, "w": 3},
                                  "test": {"x": 3, "y": 3}})
    dataset = load(config(tmp_path, split="ratio"))
    assert sorted(all_classes(dataset)) == sorted([f"t{i}" for i in range(6)] + ["v", "w", "x", "y"])
    assert "ratio" in dataset.description


@pytest.mark.parametrize("classes,expected", [(15, [5, 5, 5]), (10, [4, 3, 3]), (7, [3, 2, 2])])
def test_small_folders_keep_enough_held_out_classes(tmp_path, classes, expected):
    make_class_folders(tmp_path, {f"c{i:02d}": 3 for i in range(classes)})
    (tmp_path / "empty_class").mkdir()  # no images: reported, and takes no place in the split
    splits = [load(config(tmp_path, ways=w)).splits for w in (2, expected[1])]
    # The class split depends on the folder and seed only, not on n-way.
    for dataset_splits in splits:
        assert [dataset_splits[s].num_classes for s in ("train", "val", "test")] == expected
    assert splits[0]["test"].class_names == splits[1]["test"].class_names
    assert "empty_class" in " ".join(validate_folder(config(tmp_path)).warnings())


def test_corrupt_image_is_listed_and_skipped(tmp_path):
    make_class_folders(tmp_path, {f"c{i}": 4 for i in range(6)})
    bad = write_corrupt_png(tmp_path / "c0" / "zz_broken.png")
    (tmp_path / "c1" / "readme.txt").write_text("not an image, not reported")
    (tmp_path / "c1" / "fake.jpg").write_text("not an image either")
    report = validate_folder(config(tmp_path))
    skipped = dict(report.skipped_files)
    assert set(skipped) == {str(bad), str(tmp_path / "c1" / "fake.jpg")}
    assert "truncated" in skipped[str(bad)] or "corrupt" in skipped[str(bad)]
    assert "not an image" in skipped[str(tmp_path / "c1" / "fake.jpg")]
    assert report.ok
    dataset = load(config(tmp_path))
    assert dict(dataset.skipped_files) == skipped
    assert sum(len(s) for s in dataset.splits.values()) == 24
    assert "could not be read" in dataset.description


def test_small_classes_are_named(tmp_path):
    make_class_folders(tmp_path, {"big1": 6, "big2": 6, "big3": 6, "tiny": 2, "big4": 6, "big5": 6, "big6": 6,
                                  "big7": 6, "big8": 6, "big9": 6})
    report = validate_folder(config(tmp_path, shots=1, queries=3))
    assert [(name, count) for _, name, count in report.small_classes] == [("tiny", 2)]
    assert any("'tiny'" in line and "k-shot + q-query = 4" in line for line in report.warnings())
    if report.ok:  # unless 'tiny' landed in a two-class held-out split
        assert "'tiny'" in load(config(tmp_path, shots=1, queries=3)).description


def test_too_few_usable_classes_because_of_small_ones(tmp_path):
    make_split_folders(tmp_path, {"train": {"a": 5, "b": 5, "c": 5}, "val": {"d": 5, "e": 5},
                                  "test": {"f": 5, "g": 2}})
    with pytest.raises(EpisodeError) as info:
        load(config(tmp_path, shots=1, queries=3))
    message = str(info.value)
    assert "meta-test" in message and "k-shot + q-query = 4" in message and "Lower" in message


def test_fewer_classes_than_ways_names_the_split(tmp_path):
    make_split_folders(tmp_path, {"train": {"a": 3, "b": 3, "c": 3}, "val": {"d": 3, "e": 3, "h": 3},
                                  "test": {"f": 3, "g": 3}})
    report = validate_folder(config(tmp_path, ways=3))
    assert len(report.errors) == 1
    with pytest.raises(EpisodeError) as info:
        load(config(tmp_path, ways=3))
    message = str(info.value)
    assert "meta-test" in message and "2 classes" in message and "n-way = 3" in message
    assert "at most 2" in message and "test folder" in message


def test_ratio_split_too_few_classes_says_how_many_ways_fit(tmp_path):
    make_class_folders(tmp_path, {f"c{i}": 3 for i in range(7)})  # split 3/2/2
    with pytest.raises(EpisodeError) as info:
        load(config(tmp_path, ways=3))
    message = str(info.value)
    assert "7 classes" in message and "at most 2" in message and "n-way = 3" in message
    assert "meta-validation" in message or "meta-test" in message
    make_class_folders(tmp_path / "few", {f"c{i}": 3 for i in range(5)})  # split 3/1/1
    with pytest.raises(EpisodeError, match="6 are needed for 2-way"):
        load(config(tmp_path / "few", ways=2))


@pytest.mark.parametrize("case", ["missing", "empty", "loose_images", "file", "no_images", "blank_root"])
def test_folder_problems_name_the_path(tmp_path, case):
    root = tmp_path / "data"
    if case == "empty":
        root.mkdir()
    elif case == "loose_images":
        root.mkdir()
        for i in range(3):
            write_corrupt_png(root / f"{i}.png")
    elif case == "file":
        root.write_text("x")
    elif case == "no_images":
        (root / "cat").mkdir(parents=True)
        (root / "dog").mkdir()
        (root / "dog" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError) as info:
        load(config("" if case == "blank_root" else root))
    message = str(info.value)
    assert not isinstance(info.value, EpisodeError)
    if case == "blank_root":
        assert "dataset.root is empty" in message
    else:
        assert str(root) in message
    expected = {"missing": "does not exist", "empty": "no class subfolders", "loose_images": "own subfolder",
                "file": "not a folder", "no_images": "no image files", "blank_root": "empty"}[case]
    assert expected in message


def test_class_in_two_split_folders_is_an_error(tmp_path):
    make_split_folders(tmp_path, {"train": {"a": 3, "b": 3}, "val": {"c": 3, "d": 3}, "test": {"a": 3, "e": 3}})
    with pytest.raises(DatasetError, match="class 'a' is in both"):
        load(config(tmp_path))


def test_omniglot_split_names_are_rejected(tmp_path):
    make_class_folders(tmp_path, {f"c{i}": 3 for i in range(6)})
    with pytest.raises(DatasetError, match="'lake' is for Omniglot"):
        load(config(tmp_path, split="lake"))


def test_grayscale_folder_gets_one_channel_and_drawing_foreground(tmp_path):
    for i in range(6):
        folder = tmp_path / f"glyph{i}"
        folder.mkdir()
        for j in range(3):
            image = np.full((20, 20), 250, dtype=np.uint8)
            image[5:15, 8 + i % 3] = 0  # a dark stroke on white
            Image.fromarray(image, "L").save(folder / f"{j}.png")
    dataset = load(config(tmp_path))
    assert dataset.spec.channels == 1 and dataset.spec.foreground == "dark"
    assert dataset.splits["train"].images.shape[1:] == (1, 16, 16)
    assert 0.5 < dataset.spec.mean[0] < 1.0


def test_rgb_with_one_colour_image_keeps_three_channels(tmp_path):
    make_class_folders(tmp_path, {f"c{i}": 3 for i in range(6)}, mode="L")
    make_class_folders(tmp_path, {"colour": 3}, start_index=7)
    assert load(config(tmp_path)).spec.channels == 3


def test_rotations_multiply_training_classes(tmp_path):
    make_class_folders(tmp_path, {f"c{i}": 3 for i in range(10)})
    plain = load(config(tmp_path))
    rotated = load(config(tmp_path, rotations=True))
    assert rotated.splits["train"].num_classes == 4 * plain.splits["train"].num_classes
    assert rotated.splits["test"].num_classes == plain.splits["test"].num_classes


def test_second_load_uses_the_disk_cache(tmp_path, monkeypatch):
    make_class_folders(tmp_path, {f"c{i}": 3 for i in range(6)})
    first = load(config(tmp_path))
    import workbench.core.data.folder as folder_module

    def no_decoding(*args, **kwargs):
        raise AssertionError("images were decoded again")

    monkeypatch.setattr(folder_module, "load_many", no_decoding)
    second = load(config(tmp_path))
    assert torch.equal(first.splits["train"].images, second.splits["train"].images)
    # Adding an image changes the class folder, so the cache is rebuilt.
    make_class_folders(tmp_path, {"c0": 4})
    with pytest.raises(AssertionError, match="decoded again"):
        load(config(tmp_path))


def write_unreadable_files(folder) -> dict[str, str]:
    """A truncated PNG and JPEG, a text file named .png, a 0-byte file and a decompression bomb, each with a word
    its reason must hold."""
    import io

    from fixtures_data import png_header_only

    folder.mkdir(parents=True, exist_ok=True)
    jpeg = io.BytesIO()
    Image.effect_noise((64, 64), 60).save(jpeg, "JPEG", quality=90)
    (folder / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 3])
    write_corrupt_png(folder / "cut.png")
    (folder / "text.png").write_text("a text file renamed .png")
    (folder / "zero.png").write_bytes(b"")
    (folder / "bomb.png").write_bytes(png_header_only(12_000, 12_000))
    words = {"cut.jpg": "truncated", "cut.png": "truncated", "text.png": "not an image", "zero.png": "empty",
             "bomb.png": "decompression bomb"}
    return {str(folder / name): word for name, word in words.items()}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_every_unreadable_file_is_listed_with_its_reason_also_from_the_cache(tmp_path, monkeypatch):
    make_class_folders(tmp_path, {f"c{i}": 4 for i in range(6)}, mode="L")
    bad = write_unreadable_files(tmp_path / "c0")
    first = load(config(tmp_path))
    reasons = dict(first.skipped_files)
    assert reasons.keys() == bad.keys()
    for path, word in bad.items():
        assert word in reasons[path], (path, reasons[path])
    assert first.skipped_summary(2, "the list")[0] == "skipped 5 files that could not be read; see the list for the " \
                                                      "full list:"
    import workbench.core.data.folder as folder_module

    monkeypatch.setattr(folder_module, "load_many", lambda *a, **k: pytest.fail("decoded again, not cached"))
    second = load(config(tmp_path))
    assert second.skipped_files == first.skipped_files and second.warnings == first.warnings


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_class_folder_of_unreadable_files_is_named_in_the_split_error(tmp_path):
    make_split_folders(tmp_path, {"train": {"a": 3, "b": 3, "c": 3}, "val": {"d": 3, "e": 3, "h": 3},
                                  "test": {"f": 3, "g": 3}})
    write_unreadable_files(tmp_path / "test" / "broken")
    with pytest.raises(EpisodeError) as info:
        load(config(tmp_path, ways=3))
    message = str(info.value)
    assert "meta-test split" in message and "2 classes" in message  # the count, and why it is short:
    assert "'broken' (meta-test): none of its 5 image file(s) could be read, e.g. 'bomb.png': " in message
    assert "decompression bomb" in message
    # With a ratio split the same folder can take a held-out place and leave the split short.
    flat = tmp_path / "flat"
    make_class_folders(flat, {f"c{i:02d}": 3 for i in range(14)})
    whole = validate_folder(config(flat, ways=4))  # split 6/4/4
    assert whole.ok
    victim = whole.classes["test"][0]
    for image in (flat / victim).iterdir():
        image.unlink()
    write_unreadable_files(flat / victim)
    report = validate_folder(config(flat, ways=4))
    assert not report.ok and any("meta-test split has 3 classes" in e for e in report.errors)
    assert any(f"'{victim}' (meta-test): none of its 5 image file(s) could be read" in e for e in report.errors)


def test_empty_class_folders_are_warned_about(tmp_path):
    make_split_folders(tmp_path, {"train": {"a": 3, "b": 3, "c": 3}, "val": {"d": 3, "e": 3},
                                  "test": {"f": 3, "g": 3}})
    (tmp_path / "train" / "nothing").mkdir()
    (tmp_path / "test" / "notes").mkdir()
    (tmp_path / "test" / "notes" / "readme.txt").write_text("no images here")
    dataset = load(config(tmp_path))
    assert dataset.splits["train"].class_names == ["a", "b", "c"]
    [warning] = dataset.warnings
    assert "'nothing' (meta-train): the folder is empty" in warning
    assert "'notes' (meta-test): it holds no image file (1 other file(s), e.g. 'readme.txt'" in warning
    flat = tmp_path / "flat"
    make_class_folders(flat, {f"c{i:02d}": 3 for i in range(9)})
    (flat / "hollow").mkdir()
    assert any("'hollow': the folder is empty" in line for line in load(config(flat)).warnings)
