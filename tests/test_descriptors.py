"""Class descriptors: the glyphs' attributes measured from their generator (deterministic, distinct across classes,
within their declared ranges, turned with rotation classes as the images are), the descriptors.csv reader of image
folders with its errors, and what a zero-shot algorithm asks of a dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.core.data.base import ClassSplit, FewShotDataset, PreprocessSpec
from workbench.core.data.descriptors import (CSV_FILE, GLYPH_FIELDS, DescriptorField, DescriptorSpace,
                                             attach_csv_descriptors, descriptor_space, episode_descriptors,
                                             read_descriptor_csv, require_descriptors, rotate_quarter_turns,
                                             shape_descriptor)
from workbench.core.data.glyphs import DEFAULT_PARAMS, GlyphParams, glyph_descriptors, make_glyphs, render_class
from workbench.core.errors import ConfigError, DatasetError

FIELD = {f.name: i for i, f in enumerate(GLYPH_FIELDS)}
TEST_IDS = tuple(DEFAULT_PARAMS.split_class_ranges()["test"])
TINY = GlyphParams(num_alphabets=3, characters_per_alphabet=4, samples_per_class=3, split_alphabets=(1, 1, 1))


# --- glyphs -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def test_split_descriptors() -> np.ndarray:
    return glyph_descriptors(DEFAULT_PARAMS, TEST_IDS)


def test_glyph_descriptors_are_deterministic_distinct_and_in_range(test_split_descriptors):
    values = test_split_descriptors
    assert values.shape == (len(TEST_IDS), len(GLYPH_FIELDS)) and values.dtype == np.float32
    again = glyph_descriptors(DEFAULT_PARAMS, TEST_IDS[::-1])[::-1]
    np.testing.assert_array_equal(values, again)  # the same class always gets the same attributes
    assert len(np.unique(values, axis=0)) == len(TEST_IDS)  # no two classes share a description
    low, high = np.array([f.low for f in GLYPH_FIELDS]), np.array([f.high for f in GLYPH_FIELDS])
    assert ((values >= low - 1e-6) & (values <= high + 1e-6)).all()
    counts = [FIELD[name] for name in ("strokes", "corners", "loops", "crossings", "free_ends")]
    np.testing.assert_array_equal(values[:, counts], np.round(values[:, counts]))
    assert all(GLYPH_FIELDS[i].integer for i in counts)
    # Every attribute varies over the classes (none is constant, so each can tell classes apart).
    assert (values.std(axis=0) > 0).all()


def test_simple_shapes_get_the_attributes_they_should():
    t = np.linspace(0, 2 * np.pi, 60)
    circle = np.stack([np.cos(t), np.sin(t)], 1)
    line = np.array([[-1.0, 0.0], [1.0, 0.0]])
    cross = [np.array([[-1.0, 0.0], [1.0, 0.0]]), np.array([[0.0, -1.0], [0.0, 1.0]])]
    ring = shape_descriptor([circle], [True])
    assert ring[FIELD["loops"]] == 1 and ring[FIELD["free_ends"]] == 0 and ring[FIELD["strokes"]] == 1
    assert ring[FIELD["symmetry_lr"]] > 0.9 and ring[FIELD["symmetry_tb"]] > 0.9
    assert ring[FIELD["curviness"]] == pytest.approx(2 * np.pi / ring[FIELD["ink_length"]], rel=0.05)
    bar = shape_descriptor([line], [False])
    assert bar[FIELD["horizontal"]] == pytest.approx(1.0) and bar[FIELD["loops"]] == 0
    assert bar[FIELD["free_ends"]] == 2 and bar[FIELD["width_share"]] == pytest.approx(1.0)
    plus = shape_descriptor(cross, [False, False])
    assert plus[FIELD["crossings"]] == 1 and plus[FIELD["free_ends"]] == 4
    assert plus[FIELD["horizontal"]] == pytest.approx(0.0, abs=1e-9)
    hook = shape_descriptor([np.array([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]])], [False])
    assert hook[FIELD["corners"]] == 1 and hook[FIELD["balance_x"]] < 0 and hook[FIELD["balance_y"]] < 0


def test_a_quarter_turn_turns_the_attributes_as_torch_rot90_turns_the_image():
    ids = tuple(range(40))
    upright = glyph_descriptors(DEFAULT_PARAMS, ids)
    turned = glyph_descriptors(DEFAULT_PARAMS, ids, (1,) * len(ids))
    np.testing.assert_allclose(turned[:, FIELD["width_share"]], 1 - upright[:, FIELD["width_share"]], atol=1e-5)
    np.testing.assert_allclose(turned[:, FIELD["horizontal"]], -upright[:, FIELD["horizontal"]], atol=1e-5)
    np.testing.assert_allclose(turned[:, FIELD["balance_y"]], upright[:, FIELD["balance_x"]], atol=1e-5)
    np.testing.assert_allclose(glyph_descriptors(DEFAULT_PARAMS, ids, (4,) * len(ids)), upright, atol=1e-5)
    # The image turned by torch.rot90 has its ink where the turned drawing's descriptor says it is.
    ink = 255.0 - torch.from_numpy(np.stack([render_class(DEFAULT_PARAMS, c, 28)[0] for c in ids])).float()
    ink = torch.rot90(ink, 1, dims=(1, 2))
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    total = ink.sum((1, 2))
    image_x = ((ink * xs).sum((1, 2)) / total).numpy()
    image_y = -((ink * ys).sum((1, 2)) / total).numpy()  # y up, as in the descriptor
    assert np.corrcoef(image_x, turned[:, FIELD["balance_x"]])[0, 1] > 0.5
    assert np.corrcoef(image_y, turned[:, FIELD["balance_y"]])[0, 1] > 0.5


def test_glyph_splits_carry_descriptors_measured_on_first_use():
    dataset = make_glyphs(TINY, 16, rotations=True, use_cache=False)
    assert dataset.descriptor_fields == GLYPH_FIELDS
    train, test = dataset.splits["train"], dataset.splits["test"]
    assert callable(test.descriptors)  # not measured while loading
    ids = tuple(TINY.split_class_ranges()["test"])
    torch.testing.assert_close(test.class_descriptors, torch.from_numpy(glyph_descriptors(TINY, ids)))
    assert isinstance(test.descriptors, torch.Tensor)  # measured once, then kept
    # Rotation classes: four times the classes, each with the descriptor of its turned drawing.
    assert train.class_descriptors.shape == (4 * 4, len(GLYPH_FIELDS))
    base = tuple(TINY.split_class_ranges()["train"])
    torch.testing.assert_close(train.class_descriptors[4:8], torch.from_numpy(glyph_descriptors(TINY, base, (1,) * 4)))
    assert not torch.equal(train.class_descriptors[:4], train.class_descriptors[4:8])


def test_a_descriptor_function_of_the_wrong_shape_is_refused():
    split = ClassSplit(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"],
                       descriptor_fields=GLYPH_FIELDS[:2], descriptors=lambda: torch.zeros(3, 2))
    with pytest.raises(ValueError, match="for 2 classes and 2 fields"):
        split.class_descriptors


# --- descriptors.csv ----------------------------------------------------------------------------------------------
def write_csv(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CSV_FILE
    path.write_text(text, encoding="utf-8")
    return path


def splits_of(*groups: list[str]) -> dict[str, ClassSplit]:
    def split(names):
        return ClassSplit(torch.zeros(len(names), 1, 4, 4, dtype=torch.uint8), torch.arange(len(names)), names)
    return dict(zip(("train", "val", "test"), (split(names) for names in groups)))


def test_a_csv_gives_each_split_its_classes_rows(tmp_path):
    write_csv(tmp_path, "class,wings,legs,stripes\ncat,0,4,0.5\nbee,4,6,1\nowl,2,2,0.1\nfish,0,0,0\n"
                        "ant,0,6,0.0\nextra,9,9,9\n")
    splits = splits_of(["cat", "bee"], ["owl"], ["fish", "ant"])
    assert attach_csv_descriptors(splits, tmp_path)
    torch.testing.assert_close(splits["train"].class_descriptors, torch.tensor([[0.0, 4, 0.5], [4, 6, 1]]))
    torch.testing.assert_close(splits["test"].class_descriptors, torch.tensor([[0.0, 0, 0], [0, 6, 0]]))
    wings, legs, stripes = splits["val"].descriptor_fields
    assert (wings.name, wings.low, wings.high, wings.integer) == ("wings", 0, 9, True)
    assert stripes.integer is False and CSV_FILE in stripes.help
    dataset = FewShotDataset("folder", PreprocessSpec(4, 1, (0.5,), (0.5,)), splits)
    assert [f.name for f in dataset.descriptor_fields] == ["wings", "legs", "stripes"]


def test_no_csv_leaves_the_folder_without_descriptors(tmp_path):
    splits = splits_of(["a", "b"], ["c"], ["d"])
    assert not attach_csv_descriptors(splits, tmp_path)
    assert all(s.class_descriptors is None for s in splits.values())


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("class\ncat\n", r"line 1: the header names no attribute"),
    ("class,legs,legs\ncat,1,2\n", r"line 1, column 3: attribute 'legs' appears twice"),
    ("class,legs,\ncat,1,2\n", r"line 1, column 3: the attribute has no name"),
    ("class,legs,wings\ncat,4,0\nbee,6\n", r"line 3: 2 columns, but the header has 3"),
    ("class,legs,wings\ncat,4,0\n\nbee,six,4\n", r"line 4, column 2 \('legs'\): 'six' is not a finite number"),
    ("class,legs\ncat,nan\n", r"line 2, column 2 \('legs'\): 'nan' is not a finite number"),
    ("class,legs\ncat,4\ncat,4\n", r"line 3, column 1: class 'cat' already has a row \(line 2\)"),
    ("class,legs\n,4\n", r"line 2, column 1: the class name is empty"),
    ("class,legs\n", "has a header but no class rows"),
])
def test_csv_errors_name_the_file_line_and_column(tmp_path, text, message):
    path = write_csv(tmp_path, text)
    with pytest.raises(DatasetError, match=message) as caught:
        read_descriptor_csv(path)
    assert str(path) in str(caught.value)


def test_a_class_without_a_row_is_named(tmp_path):
    path = write_csv(tmp_path, "class,legs\ncat,4\n")
    with pytest.raises(DatasetError, match=r"no row for the classes 'bee', 'owl'") as caught:
        attach_csv_descriptors(splits_of(["cat", "bee"], ["owl"], ["cat"]), tmp_path)
    assert str(path) in str(caught.value)


# --- what a zero-shot algorithm asks -------------------------------------------------------------------------------
def test_a_dataset_without_descriptors_names_itself_and_the_csv():
    dataset = FewShotDataset("folder", PreprocessSpec(4, 1, (0.5,), (0.5,)), splits_of(["a", "b"], ["c"], ["d"]))
    with pytest.raises(ConfigError, match=rf"'folder' has no class descriptors in its train split.*{CSV_FILE}"):
        require_descriptors(dataset)
    with pytest.raises(ConfigError, match="no descriptors"):
        episode_descriptors(dataset.splits["test"], [0])
    rotated = make_glyphs(TINY, 16, use_cache=False)
    rotated.splits["train"] = ClassSplit(rotated.splits["train"].images, rotated.splits["train"].labels,
                                         [f"{n} (rot90)" for n in rotated.splits["train"].class_names])
    with pytest.raises(ConfigError, match="rotations off"):
        require_descriptors(rotated)


def test_the_descriptor_space_survives_a_checkpoint_and_checks_values():
    dataset = make_glyphs(TINY, 16, use_cache=False)
    space = descriptor_space(dataset, presets=2)
    assert space.fields == GLYPH_FIELDS and len(space.presets) == 2
    assert set(space.presets) <= set(dataset.splits["test"].class_names)
    np.testing.assert_allclose(space.defaults, dataset.splits["train"].class_descriptors.median(0).values)
    restored = DescriptorSpace.from_state(space.to_state())
    assert restored.fields == space.fields and restored.presets.keys() == space.presets.keys()
    np.testing.assert_allclose(restored.defaults, space.defaults)
    values = dict(zip([f.name for f in GLYPH_FIELDS], space.defaults))
    assert space.vector(values) == pytest.approx(space.defaults)
    with pytest.raises(ConfigError, match="missing strokes; unknown petals"):
        space.vector({**{k: v for k, v in values.items() if k != "strokes"}, "petals": 5})
    assert not DescriptorSpace() and DescriptorSpace.from_state(DescriptorSpace(GLYPH_FIELDS[:1], [1.0]).to_state())


def test_fields_need_a_name_and_a_range():
    with pytest.raises(ValueError):
        DescriptorField("x", "X", 1.0, 1.0, "empty range")
    assert rotate_quarter_turns([np.array([[1.0, 0.0]])], 1)[0] == pytest.approx(np.array([[0.0, 1.0]]))


def test_an_image_folder_reads_its_csv_and_a_broken_one_is_only_a_warning(tmp_path):
    from fixtures_data import make_class_folders
    from workbench.core.config import DatasetConfig
    from workbench.core.data.folder import load as load_folder

    names = [f"c{i}" for i in range(10)]
    make_class_folders(tmp_path, {name: 3 for name in names})
    write_csv(tmp_path, "class,legs,wings\n" + "".join(f"{name},{i},{i % 3}\n" for i, name in enumerate(names)))
    config = DatasetConfig(name="folder", root=str(tmp_path), image_size=16, ways=2, shots=1, queries=1)
    dataset = load_folder(config)
    assert [f.name for f in dataset.descriptor_fields] == ["legs", "wings"]
    split = dataset.splits["train"]
    legs = [int(names.index(name)) for name in split.class_names]
    assert split.class_descriptors[:, 0].tolist() == legs
    write_csv(tmp_path, "class,legs\nc0,four\n")  # broken: the folder still loads for every other algorithm
    dataset = load_folder(config)
    assert dataset.splits["train"].class_descriptors is None
    assert any(CSV_FILE in warning and "line 2" in warning for warning in dataset.warnings)
