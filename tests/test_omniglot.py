"""Omniglot on the real data: folder and zip layouts, Lake and Vinyals splits, rotations, cache, download errors."""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace
from urllib.error import URLError

import numpy as np
import pytest
import torch

from workbench.core.config import DatasetConfig
from workbench.core.data import Cancelled, load_dataset, omniglot
from workbench.core.data.images import cache_dir
from workbench.core.errors import DatasetError

OMNIGLOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
SMALL1 = OMNIGLOT / "images_background_small1.zip"
SMALL2 = OMNIGLOT / "images_background_small2.zip"
BACKGROUND_CHARACTERS, EVALUATION_CHARACTERS, IMAGES = 964, 659, 32_460

pytestmark = pytest.mark.skipif(not OMNIGLOT.is_dir(), reason=f"the real Omniglot data is not at {OMNIGLOT}")


def config(root=OMNIGLOT, **kwargs) -> DatasetConfig:
    return DatasetConfig(name="omniglot", root=str(root), **kwargs)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The full set loaded once, cold, into a cache folder shared by this module's tests."""
    cache = tmp_path_factory.mktemp("omniglot-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_CACHE_DIR", str(cache))
        start = time.perf_counter()
        dataset = omniglot.load(config())
        cold = time.perf_counter() - start
        start = time.perf_counter()
        cached = omniglot.load(config())
        warm = time.perf_counter() - start
    print(f"\nfull Omniglot load: cold {cold:.1f} s, from cache {warm:.2f} s")
    return SimpleNamespace(dataset=dataset, cached=cached, cold=cold, warm=warm, cache=cache)


@pytest.fixture
def shared_cache(full, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(full.cache))
    return full.cache


def test_full_load_counts_and_time(full):
    dataset = full.dataset
    assert full.cold < 60, f"loading full Omniglot took {full.cold:.1f} s"
    assert sum(len(s) for s in dataset.splits.values()) == IMAGES
    assert dataset.splits["test"].num_classes == EVALUATION_CHARACTERS
    assert dataset.splits["train"].num_classes + dataset.splits["val"].num_classes == BACKGROUND_CHARACTERS
    for split in dataset.splits.values():
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (1, 28, 28)
        assert set(split.class_counts()) == {20}
    assert not dataset.skipped_files
    spec = dataset.spec
    assert (spec.image_size, spec.channels, spec.foreground) == (28, 1, "dark")


def test_second_load_comes_from_the_cache(full):
    assert full.warm < 5 and full.warm < full.cold / 3
    assert list((full.cache / "datasets").glob("omniglot-*.npz"))
    for name in ("train", "val", "test"):
        assert torch.equal(full.cached.splits[name].images, full.dataset.splits[name].images)


def test_lake_split(full):
    dataset = full.dataset
    dataset.check_disjoint()
    train, val, test = (dataset.splits[s] for s in ("train", "val", "test"))
    # Validation holds out whole background alphabets: about 10% of the characters.
    assert not set(train.class_groups) & set(val.class_groups)
    assert not set(train.class_groups) & set(test.class_groups)
    assert 0.05 * BACKGROUND_CHARACTERS <= val.num_classes <= 0.2 * BACKGROUND_CHARACTERS
    assert len(set(test.class_groups)) == 20 and len(set(train.class_groups) | set(val.class_groups)) == 30
    assert all(name.startswith(group + "/character") for name, group in zip(test.class_names, test.class_groups))
    assert "Tengwar/character01" in test.class_names  # an evaluation alphabet
    assert "Latin/character01" in train.class_names + val.class_names  # a background alphabet
    # Drawings are dark strokes on white.
    assert 0.8 < train.images.float().mean().item() / 255 < 0.97


def test_normalisation_comes_from_the_meta_train_images_only(full):
    train = full.dataset.splits["train"].images.double() / 255
    spec = full.dataset.spec
    assert spec.mean[0] == pytest.approx(train.mean().item(), abs=1e-4)
    assert spec.std[0] == pytest.approx(train.std().item(), abs=1e-4)
    everything = torch.cat([s.images for s in full.dataset.splits.values()]).double() / 255
    assert abs(spec.mean[0] - everything.mean().item()) > 1e-3  # the test characters would shift it


def synthetic_pool(test_value: int, train_value: int = 250) -> dict[str, np.ndarray]:
    """A decoded pool of 4 background and 2 evaluation characters (2 images each) with chosen pixel values."""
    parts = ["background"] * 4 + ["evaluation"] * 2
    labels = np.repeat(np.arange(6), 2).astype(np.int32)
    images = np.full((12, 28, 28), train_value, np.uint8)
    images[:, :4, :4] = 0  # a stroke, so the spread is not zero
    images[labels >= 4] = test_value
    return {"images": images, "labels": labels, "names": np.array([f"a{i}/c" for i in range(6)]),
            "alphabets": np.array(["A", "A", "B", "B", "E", "E"]), "parts": np.array(parts),
            "skipped": np.array([], dtype=str)}


def test_test_images_do_not_change_the_normalisation(tmp_path, monkeypatch):
    monkeypatch.setattr(omniglot, "find_sources", lambda root: [object()])
    specs = {}
    for test_value, train_value in ((0, 250), (255, 250), (0, 200)):
        monkeypatch.setattr(omniglot, "load_pool", lambda root, size, progress, p=synthetic_pool(test_value,
                                                                                                 train_value): p)
        dataset = omniglot.load(config(tmp_path))
        assert dataset.splits["test"].num_classes == 2
        specs[test_value, train_value] = dataset.spec
    assert specs[0, 250] == specs[255, 250]  # black or white test characters: the same statistics
    assert specs[0, 200].mean != specs[0, 250].mean  # while the meta-train pixels do count
    train = torch.from_numpy(synthetic_pool(0)["images"][:8]).double() / 255
    assert specs[0, 250].mean[0] == pytest.approx(train.mean().item(), abs=1e-4)
    assert specs[0, 250].std[0] == pytest.approx(train.std().item(), abs=1e-4)


def test_vinyals_split(shared_cache):
    dataset = omniglot.load(config(split="vinyals"))
    assert [dataset.splits[s].num_classes for s in ("train", "val", "test")] == [1028, 172, 423]
    assert sum(len(s) for s in dataset.splits.values()) == IMAGES
    assert dataset.splits["test"].images.shape[1:] == (1, 28, 28)
    dataset.check_disjoint()
    # Seeded: the same seed repeats the split, another seed changes it.
    again = omniglot.load(config(split="vinyals"))
    other = omniglot.load(config(split="vinyals", split_seed=1))
    assert again.splits["test"].class_names == dataset.splits["test"].class_names
    assert other.splits["test"].class_names != dataset.splits["test"].class_names


def test_rotation_augmentation(shared_cache, full):
    rotated = omniglot.load(config(rotations=True))
    plain = full.dataset.splits["train"]
    train = rotated.splits["train"]
    assert train.num_classes == 4 * plain.num_classes and len(train) == 4 * len(plain)
    assert rotated.splits["test"].num_classes == EVALUATION_CHARACTERS
    for k in (1, 2, 3):
        label = k * plain.num_classes  # the rotated copy of class 0
        assert train.class_names[label] == f"{plain.class_names[0]} (rot{90 * k})"
        expected = torch.rot90(plain.images[plain.labels == 0], k, dims=(2, 3))
        assert torch.equal(train.images[train.labels == label], expected)


def test_through_load_dataset(shared_cache):
    dataset = load_dataset(config(), use_cache=False)
    assert dataset.splits["test"].num_classes == EVALUATION_CHARACTERS


def test_small_zip_file(tmp_path):
    dataset = omniglot.load(config(SMALL1))
    assert sum(s.num_classes for s in dataset.splits.values()) == 136
    assert sum(len(s) for s in dataset.splits.values()) == 136 * 20
    groups = [set(dataset.splits[s].class_groups) for s in ("train", "val", "test")]
    assert all(groups) and not (groups[0] & groups[1]) and not (groups[0] & groups[2])
    assert "Only images_background" in dataset.description


def test_folder_of_small_zips_merges_shared_alphabets(tmp_path):
    (tmp_path / SMALL1.name).symlink_to(SMALL1)
    (tmp_path / SMALL2.name).symlink_to(SMALL2)
    dataset = omniglot.load(config(tmp_path, image_size=20))
    # small1 has 136 characters, small2 156; they share Greek and Latin (50 characters).
    assert sum(s.num_classes for s in dataset.splits.values()) == 136 + 156 - 50
    assert set(c for s in dataset.splits.values() for c in s.class_counts()) == {20}
    assert dataset.splits["train"].images.shape[1:] == (1, 20, 20) and dataset.spec.image_size == 20


def make_official_zips(folder: Path, background: int = 3, evaluation: int = 2, characters: int = 3) -> None:
    """images_background.zip / images_evaluation.zip holding a few real characters, official layout."""
    for part, count in (("images_background", background), ("images_evaluation", evaluation)):
        alphabets = sorted(p for p in (OMNIGLOT / part).iterdir() if p.is_dir())[:count]
        with zipfile.ZipFile(folder / f"{part}.zip", "w") as archive:
            for alphabet in alphabets:
                for character in sorted(p for p in alphabet.iterdir() if p.is_dir())[:characters]:
                    for png in sorted(character.glob("*.png")):
                        archive.write(png, f"{part}/{alphabet.name}/{character.name}/{png.name}")


def test_official_zip_files(tmp_path, full):
    make_official_zips(tmp_path)
    dataset = omniglot.load(config(tmp_path))
    assert dataset.splits["test"].num_classes == 6
    assert dataset.splits["train"].num_classes + dataset.splits["val"].num_classes == 9
    assert dataset.splits["val"].num_classes >= 3  # at least one whole alphabet
    assert "Lake split" in dataset.description
    # The same drawings decode identically from the zip and from the folders.
    folder = full.dataset.splits["test"]
    name = dataset.splits["test"].class_names[0]
    zipped = dataset.splits["test"].images[dataset.splits["test"].labels == 0]
    assert torch.equal(zipped, folder.images[folder.labels == folder.class_names.index(name)])


@pytest.mark.slow
def test_official_zip_files_full_decode_matches_folder(tmp_path):
    """Covered quickly by test_official_zip_files; kept for a full comparison when slow tests run."""
    make_official_zips(tmp_path, background=30, evaluation=20, characters=100)
    zipped = omniglot.load(config(tmp_path))
    assert sum(len(s) for s in zipped.splits.values()) == IMAGES


def make_tiny_zip(path: Path, alphabets: int = 3, characters: int = 4) -> Path:
    """A zip in the small-set layout with a few real characters (fast to decode)."""
    with zipfile.ZipFile(SMALL1) as source, zipfile.ZipFile(path, "w") as target:
        keep = sorted({n.split("/")[1] for n in source.namelist() if n.count("/") >= 2})[:alphabets]
        for member in source.namelist():
            parts = member.split("/")
            if (len(parts) == 4 and parts[3].endswith(".png") and parts[1] in keep
                    and int(parts[2].removeprefix("character")) <= characters):
                target.writestr(member, source.read(member))
    return path


def test_cache_is_rebuilt_when_corrupt_or_stale(tmp_path):
    archive = make_tiny_zip(tmp_path / "tiny.zip")
    first = omniglot.load(config(archive))
    files = list((cache_dir() / "datasets").glob("omniglot-*.npz"))
    assert len(files) == 1
    files[0].write_bytes(b"garbage")
    second = omniglot.load(config(archive))
    assert torch.equal(first.splits["train"].images, second.splits["train"].images)
    assert np.load(files[0])["images"].shape[0] == 3 * 4 * 20  # rewritten, readable again
    os.utime(archive, ns=(time.time_ns(), time.time_ns() + 10**9))  # the source changed: a new cache entry
    omniglot.load(config(archive))
    assert len(list((cache_dir() / "datasets").glob("omniglot-*.npz"))) == 2


def test_cancel_stops_loading_and_writes_no_cache(tmp_path):
    def cancel(done, total, message):
        if done > 100:
            raise Cancelled("user cancelled")

    with pytest.raises(Cancelled):
        omniglot.load(config(make_tiny_zip(tmp_path / "tiny.zip")), cancel)
    assert not list(cache_dir().glob("datasets/omniglot-*"))


def test_missing_data_names_what_to_do(tmp_path):
    with pytest.raises(DatasetError) as info:
        omniglot.load(config(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message and "images_background" in message and "images_evaluation.zip" in message
    assert "dataset.download" in message


def test_offline_download_fails_clearly(tmp_path, monkeypatch):
    import torchvision.datasets.omniglot as tv_omniglot

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_omniglot, "download_and_extract_archive", offline)
    messages = []
    with pytest.raises(DatasetError) as info:
        omniglot.load(config(tmp_path, download=True), lambda d, t, m: messages.append(m))
    message = str(info.value)
    assert "Downloading Omniglot failed" in message and "name resolution" in message
    assert str(tmp_path) in message and "images_background.zip" in message
    assert any("Downloading" in m for m in messages)


def test_download_goes_through_torchvision_into_root(tmp_path, monkeypatch):
    import torchvision.datasets.omniglot as tv_omniglot

    downloaded = []

    def fake_download(url, download_root, filename=None, md5=None):
        # Stand-in for the network: extract a real (small) zip where torchvision would.
        part = filename.removesuffix(".zip")
        downloaded.append(part)
        Path(download_root).mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(SMALL1) as source, zipfile.ZipFile(Path(download_root) / filename, "w") as target:
            for member in source.namelist()[:200]:
                if member.endswith(".png"):
                    alphabet, rest = member.split("/", 2)[1:]
                    target.writestr(f"{part}/{part[7:]}_{alphabet}/{rest}", source.read(member))
        with zipfile.ZipFile(Path(download_root) / filename) as archive:
            archive.extractall(download_root)

    monkeypatch.setattr(tv_omniglot, "download_and_extract_archive", fake_download)
    monkeypatch.setattr(tv_omniglot, "check_integrity", lambda path, md5=None: Path(path).is_file())
    dataset = omniglot.load(config(tmp_path, download=True))
    assert downloaded == ["images_background", "images_evaluation"]
    assert (tmp_path / "omniglot-py" / "images_background").is_dir()
    assert dataset.splits["test"].num_classes > 0 and "Lake split" in dataset.description


def test_ratio_split_is_rejected():
    with pytest.raises(DatasetError, match="does not apply to Omniglot"):
        omniglot.load(config(split="ratio"))
