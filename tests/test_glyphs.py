"""The built-in glyphs dataset: deterministic, disjoint, cached, and a real few-shot problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.core.algorithms.base import ModelSpec
from workbench.core.algorithms.protonet import ProtoNet
from workbench.core.config import DatasetConfig
from workbench.core.data import glyphs, load_dataset
from workbench.core.data.base import Cancelled
from workbench.core.data.episodes import FixedEpisodes
from workbench.core.errors import ConfigError

SMALL = glyphs.GlyphParams(num_alphabets=5, characters_per_alphabet=6, samples_per_class=8, split_alphabets=(3, 1, 1))


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(glyphs.CACHE_ENV_VAR, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def full_dataset(tmp_path_factory):
    """The default dataset, as `load` returns it, drawn once into a private cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(glyphs.CACHE_ENV_VAR, str(tmp_path_factory.mktemp("full-cache")))
        return glyphs.load(DatasetConfig())


def test_same_class_and_index_give_the_same_image():
    first = glyphs.render_glyph(1234, 7)
    again = glyphs.render_glyph(1234, 7)
    assert first.dtype == np.uint8 and first.shape == (28, 28)
    assert np.array_equal(first, again)
    # A single image equals the same sample drawn along with the rest of its class.
    assert np.array_equal(first, glyphs.render_class(glyphs.DEFAULT_PARAMS, 1234)[7])


def test_images_differ_between_classes_and_between_samples():
    a = glyphs.render_glyph(10, 0).astype(int)
    assert np.abs(a - glyphs.render_glyph(11, 0)).sum() > 0
    assert np.abs(a - glyphs.render_glyph(1900, 0)).sum() > 0
    assert np.abs(a - glyphs.render_glyph(10, 1)).sum() > 0


def test_dataset_images_match_render_glyph(full_dataset):
    test = full_dataset.splits["test"]
    first_test_class = glyphs.DEFAULT_PARAMS.split_class_ranges()["test"].start
    row = int(test.indices_by_class()[3][5])
    assert np.array_equal(test.images[row, 0].numpy(), glyphs.render_glyph(first_test_class + 3, 5))


def test_default_splits_are_disjoint_and_sized_as_documented(full_dataset):
    full_dataset.check_disjoint()
    names = {s: set(split.class_names) for s, split in full_dataset.splits.items()}
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
    groups = {s: set(split.class_groups) for s, split in full_dataset.splits.items()}
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"] or groups["val"] & groups["test"])
    for split_name, split in full_dataset.splits.items():
        assert split.num_classes == glyphs.CLASSES_PER_SPLIT[split_name]
        assert split.class_counts() == [glyphs.DEFAULT_PARAMS.samples_per_class] * split.num_classes
    assert sum(glyphs.CLASSES_PER_SPLIT.values()) >= 1000


def test_alphabets_are_recorded_as_class_groups(full_dataset):
    params = glyphs.DEFAULT_PARAMS
    for split_name, alphabets in zip(("train", "val", "test"), params.split_alphabets):
        split = full_dataset.splits[split_name]
        assert split.class_groups is not None and len(split.class_groups) == split.num_classes
        counts = {g: split.class_groups.count(g) for g in set(split.class_groups)}
        assert len(counts) == alphabets
        assert set(counts.values()) == {params.characters_per_alphabet}
        # A class name starts with its alphabet, so the GUI can show both.
        assert all(name.startswith(group) for name, group in zip(split.class_names, split.class_groups))


def test_images_are_dark_strokes_on_light_background(full_dataset):
    spec = full_dataset.spec
    assert (spec.image_size, spec.channels, spec.foreground) == (28, 1, "dark")
    images = full_dataset.splits["val"].images
    assert images.dtype == torch.uint8 and images.shape[1:] == (1, 28, 28)
    per_image = images.flatten(1)
    assert (per_image.median(dim=1).values == 255).all()  # background is white
    assert (per_image.min(dim=1).values <= 40).float().mean() > 0.95  # ink is near black
    # Antialiased: intermediate grey levels exist along stroke edges.
    grey = ((per_image > 40) & (per_image < 215)).sum(dim=1)
    assert (grey > 0).all()
    # The spec's mean/std roughly standardize the pixels.
    x = spec.normalize(full_dataset.splits["train"].images[::7])
    assert abs(float(x.mean())) < 0.15 and 0.8 < float(x.std()) < 1.25


def test_other_image_sizes_draw_the_same_character():
    big = glyphs.render_glyph(321, 4, size=56)
    small = glyphs.render_glyph(321, 4, size=28)
    assert big.shape == (56, 56)
    down = torch.nn.functional.avg_pool2d(torch.from_numpy(big).float()[None, None], 2)[0, 0].numpy()
    assert np.abs(down - small).mean() < 12  # same drawing, only finer


def test_load_honours_image_size_rotations_and_reports_progress(monkeypatch):
    monkeypatch.setattr(glyphs, "DEFAULT_PARAMS", SMALL)
    calls = []
    dataset = glyphs.load(DatasetConfig(image_size=40, rotations=True), lambda d, t, m: calls.append((d, t)))
    assert dataset.spec.image_size == 40
    assert dataset.splits["test"].images.shape == (6 * 8, 1, 40, 40)
    assert dataset.splits["train"].num_classes == 4 * 3 * 6  # rotated copies are new classes
    assert dataset.splits["val"].num_classes == 6  # only meta-train is augmented
    assert calls and calls[-1][0] == calls[-1][1]


def test_the_dataset_catalog_loads_glyphs(monkeypatch):
    monkeypatch.setattr(glyphs, "DEFAULT_PARAMS", SMALL)
    dataset = load_dataset(DatasetConfig(name="glyphs"), use_cache=False)
    assert dataset.name == "glyphs"
    assert {s: split.num_classes for s, split in dataset.splits.items()} == {"train": 18, "val": 6, "test": 6}


@pytest.mark.parametrize("size", [8, 1000])
def test_unusable_image_sizes_name_the_field(size):
    with pytest.raises(ConfigError, match="dataset.image_size"):
        glyphs.load(DatasetConfig(image_size=size))


def test_progress_can_cancel_generation():
    def cancel(done, total, message):
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        glyphs.make_glyphs(SMALL, progress=cancel)


def test_second_load_uses_the_cache(tmp_cache, monkeypatch):
    first, from_cache = glyphs.generate(SMALL)
    assert not from_cache
    assert glyphs.cache_path(SMALL, 28).is_file()
    assert glyphs.cache_path(SMALL, 28).is_relative_to(tmp_cache)

    def no_drawing(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(glyphs, "render_all", no_drawing)
    again, from_cache = glyphs.generate(SMALL)
    assert from_cache and np.array_equal(first, again)
    dataset = glyphs.make_glyphs(SMALL)
    assert dataset.splits["train"].images.shape == (3 * 6 * 8, 1, 28, 28)


def test_cache_is_keyed_by_version_and_parameters(monkeypatch):
    glyphs.generate(SMALL)
    other = glyphs.GlyphParams(**{**SMALL.__dict__, "control_jitter": SMALL.control_jitter * 2})
    assert glyphs.cache_path(other, 28) != glyphs.cache_path(SMALL, 28)
    assert glyphs.cache_path(SMALL, 32) != glyphs.cache_path(SMALL, 28)
    _, from_cache = glyphs.generate(other)
    assert not from_cache
    # A newer generator never reads an older generator's images, even from the same file name.
    path = glyphs.cache_path(SMALL, 28)
    monkeypatch.setattr(glyphs, "GENERATOR_VERSION", glyphs.GENERATOR_VERSION + 1)
    monkeypatch.setattr(glyphs, "cache_path", lambda params, size: path)
    _, from_cache = glyphs.generate(SMALL)
    assert not from_cache


def test_caches_of_other_generator_versions_are_deleted(tmp_cache):
    folder = tmp_cache / "glyphs"
    folder.mkdir(parents=True)
    stale = folder / f"glyphs-v{glyphs.GENERATOR_VERSION - 1}-28px-0123456789abcdef.bin"
    stale.write_bytes(b"old images")
    glyphs.generate(SMALL)
    assert not stale.exists()
    assert glyphs.cache_path(SMALL, 28).is_file()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped byte", "empty"])
def test_corrupt_cache_file_is_regenerated(damage):
    original, _ = glyphs.generate(SMALL)
    path = glyphs.cache_path(SMALL, 28)
    raw = bytearray(path.read_bytes())
    if damage == "garbage":
        path.write_bytes(b"not a glyph cache" * 100)
    elif damage == "truncated":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    elif damage == "flipped byte":
        raw[-100] ^= 0xFF
        path.write_bytes(bytes(raw))
    else:
        path.write_bytes(b"")
    images, from_cache = glyphs.generate(SMALL)
    assert not from_cache and np.array_equal(images, original)
    # The file was rewritten and is valid again.
    _, from_cache = glyphs.generate(SMALL)
    assert from_cache


def test_unwritable_cache_still_gives_images(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(glyphs.CACHE_ENV_VAR, str(blocker))
    images, from_cache = glyphs.generate(SMALL)
    assert not from_cache and images.shape == (SMALL.num_classes, 8, 28, 28)


def test_characters_of_an_alphabet_share_strokes():
    """Within an alphabet, characters reuse one small stroke vocabulary: that is what makes them look alike."""
    params = glyphs.DEFAULT_PARAMS
    for index in (0, 17, params.num_alphabets - 1):
        alphabet = glyphs.alphabet(params, index)
        assert params.primitives_min <= len(alphabet.primitives) <= params.primitives_max
        assert len(alphabet.characters) == params.characters_per_alphabet
        uses = {}
        for number, character in enumerate(alphabet.characters):
            assert 1 <= len(character.strokes) <= 4 and len(character.primitives) == len(character.strokes)
            for primitive in set(character.primitives):
                uses.setdefault(primitive, set()).add(number)
        assert set(uses) <= set(range(len(alphabet.primitives)))
        shares = [any(len(uses[p]) > 1 for p in character.primitives) for character in alphabet.characters]
        assert np.mean(shares) > 0.9
    assert glyphs.character(params, 0) is glyphs.alphabet(params, 0).characters[0]


def test_invalid_requests_are_refused():
    with pytest.raises(ValueError, match="class_id"):
        glyphs.render_glyph(glyphs.DEFAULT_PARAMS.num_classes, 0)
    with pytest.raises(ValueError, match="sample_index"):
        glyphs.render_glyph(0, glyphs.DEFAULT_PARAMS.samples_per_class)
    with pytest.raises(ValueError, match="split_alphabets"):
        glyphs.GlyphParams(num_alphabets=4, split_alphabets=(3, 1, 1))


@pytest.fixture
def one_thread():
    # Tiny convolutions run far faster on one thread than on an oversubscribed shared CPU.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_untrained_protonet_finds_it_a_real_few_shot_problem(full_dataset, one_thread):
    """Omniglot-hard: a random Conv-4 is well above chance (0.2) but below 0.62 on 5-way 1-shot."""
    torch.manual_seed(0)
    spec = full_dataset.spec
    model = ProtoNet(ProtoNet.build_hparams({}), ModelSpec(1, spec.image_size, 5, 1200))
    episodes = FixedEpisodes(full_dataset.splits["test"], spec, 5, 1, 15, count=200, seed=12345)
    scores = []
    for episode in episodes:
        probs = model.predict(model.adapt(episode.support_x, episode.support_y, 5), episode.query_x)
        scores.append(float((probs.argmax(-1) == episode.query_y).float().mean()))
    accuracy = float(np.mean(scores))
    assert 0.35 < accuracy < 0.62
