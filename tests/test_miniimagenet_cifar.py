"""mini-ImageNet, CIFAR-FS and FC100 on tiny fabricated copies of their real on-disk layouts."""

from __future__ import annotations

import os
import pickle
from urllib.error import URLError

import pytest
import torch

from fixtures_data import (CIFAR100_FINE, CIFAR100_HIERARCHY, class_color, make_cifar100, make_mini_imagenet_csv,
                           make_mini_imagenet_pickles, mini_classes, write_corrupt_png)
from workbench.core.config import DatasetConfig
from workbench.core.data import cifar, load_dataset, miniimagenet
from workbench.core.errors import DatasetError

SPLITS = ("train", "val", "test")


def cifar_config(root, name="cifar-fs", **kwargs) -> DatasetConfig:
    return DatasetConfig(name=name, root=str(root), **kwargs)


def check_cifar_labels(dataset, per_class: int) -> None:
    """Every image sits under the class its pixels encode, and each class has all its pooled images."""
    for split in dataset.splits.values():
        assert split.images.shape[1:] == (3, 32, 32)
        for label, name in enumerate(split.class_names):
            rows = split.images[split.labels == label]
            assert len(rows) == per_class
            assert torch.all(rows[:, 0, 0, 0] == CIFAR100_FINE.index(name))
            assert len(set(rows[:, 0, 0, 1].tolist())) == per_class  # distinct images, train and test pooled


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar_fs_split(tmp_path, bytes_keys):
    make_cifar100(tmp_path, train_per_class=3, test_per_class=2, bytes_keys=bytes_keys)
    dataset = load_dataset(cifar_config(tmp_path), use_cache=False)
    assert [dataset.splits[s].num_classes for s in SPLITS] == [64, 16, 20]
    assert set(dataset.splits["test"].class_names) == set(cifar.CIFAR_FS_TEST)
    assert set(dataset.splits["val"].class_names) == set(cifar.CIFAR_FS_VAL)
    assert len({c for s in dataset.splits.values() for c in s.class_names}) == 100
    check_cifar_labels(dataset, per_class=5)
    assert dataset.spec.image_size == 32 and dataset.spec.channels == 3 and dataset.spec.foreground == "natural"
    assert dataset.name == "cifar-fs"


def test_fc100_split_by_superclass(tmp_path):
    make_cifar100(tmp_path, train_per_class=2, test_per_class=1)
    dataset = load_dataset(cifar_config(tmp_path, "fc100"), use_cache=False)
    assert [dataset.splits[s].num_classes for s in SPLITS] == [60, 20, 20]
    groups = {s: set(dataset.splits[s].class_groups) for s in SPLITS}
    assert [len(groups[s]) for s in SPLITS] == [12, 4, 4]
    assert groups["test"] == set(cifar.FC100_TEST) and groups["val"] == set(cifar.FC100_VAL)
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    # Each class is grouped under its real superclass.
    for split in dataset.splits.values():
        for name, group in zip(split.class_names, split.class_groups):
            assert name in CIFAR100_HIERARCHY[group]
    check_cifar_labels(dataset, per_class=3)


def test_cifar_root_may_be_the_python_folder_and_image_size_is_honoured(tmp_path):
    folder = make_cifar100(tmp_path, train_per_class=1, test_per_class=1)
    dataset = cifar.load(cifar_config(folder, image_size=20, rotations=True))
    assert dataset.spec.image_size == 20
    assert dataset.splits["test"].images.shape[1:] == (3, 20, 20)
    assert dataset.splits["train"].num_classes == 4 * 64


def test_cifar_missing_names_what_was_looked_for(tmp_path):
    with pytest.raises(DatasetError) as info:
        cifar.load(cifar_config(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message and "cifar-100-python/train" in message and "dataset.download" in message


def test_cifar_offline_download_fails_clearly(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    messages = []
    with pytest.raises(DatasetError) as info:
        cifar.load(cifar_config(tmp_path, "fc100", download=True), lambda d, t, m: messages.append(m))
    message = str(info.value)
    assert "Downloading CIFAR-100 failed" in message and "name resolution" in message and str(tmp_path) in message
    assert any("Downloading" in m for m in messages)


def test_cifar_corrupt_or_hostile_pickle(tmp_path):
    folder = make_cifar100(tmp_path, train_per_class=1, test_per_class=1)
    (folder / "test").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetError, match="readable CIFAR-100"):
        cifar.load(cifar_config(tmp_path))

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (folder / "test").write_bytes(pickle.dumps({"data": Exploit()}))
    with pytest.raises(DatasetError, match="refusing"):
        cifar.load(cifar_config(tmp_path))
    assert not (tmp_path / "pwned").exists()


def test_cifar_rejects_other_split_protocols(tmp_path):
    make_cifar100(tmp_path, train_per_class=1, test_per_class=1)
    with pytest.raises(DatasetError, match="use 'default'"):
        cifar.load(cifar_config(tmp_path, split="vinyals"))


def check_mini_labels(dataset, colors: dict, per_class: int) -> None:
    for split in dataset.splits.values():
        assert split.images.shape[1:] == (3, 84, 84)
        for label, name in enumerate(split.class_names):
            rows = split.images[split.labels == label]
            assert len(rows) == per_class
            expected = torch.tensor(class_color(colors[name]), dtype=torch.float32).view(1, 3)
            assert torch.allclose(rows[:, :, 40, 40].float(), expected.expand(len(rows), 3), atol=2)


def test_mini_imagenet_pickle_cache(tmp_path):
    colors = make_mini_imagenet_pickles(tmp_path, classes=(6, 3, 4), per_class=4)
    dataset = load_dataset(DatasetConfig(name="mini-imagenet", root=str(tmp_path)), use_cache=False)
    assert [dataset.splits[s].num_classes for s in SPLITS] == [6, 3, 4]
    assert dataset.splits["val"].class_names == mini_classes("val", 3)
    check_mini_labels(dataset, colors, per_class=4)
    spec = dataset.spec
    assert (spec.image_size, spec.channels, spec.foreground) == (84, 3, "natural")
    assert spec.mean == miniimagenet.IMAGENET_MEAN and spec.std == miniimagenet.IMAGENET_STD
    assert "pickle cache" in dataset.description


def test_mini_imagenet_pickle_resized(tmp_path):
    make_mini_imagenet_pickles(tmp_path, classes=(3, 2, 2), per_class=2)
    dataset = miniimagenet.load(DatasetConfig(name="mini-imagenet", root=str(tmp_path), image_size=42))
    assert dataset.splits["train"].images.shape == (6, 3, 42, 42) and dataset.spec.image_size == 42


def test_mini_imagenet_csv_layout_skips_bad_files(tmp_path):
    colors = make_mini_imagenet_csv(tmp_path, classes=(4, 2, 3), per_class=3)
    broken = tmp_path / "images" / f"{mini_classes('train', 4)[0]}00000001.png"
    write_corrupt_png(broken)
    missing = tmp_path / "images" / f"{mini_classes('test', 3)[2]}00000002.png"
    missing.unlink()
    dataset = miniimagenet.load(DatasetConfig(name="mini-imagenet", root=str(tmp_path)))
    assert [dataset.splits[s].num_classes for s in SPLITS] == [4, 2, 3]
    skipped = dict(dataset.skipped_files)
    assert set(skipped) == {str(broken), str(missing)}
    assert "missing" in skipped[str(missing)]
    counts = {name: count for s in dataset.splits.values() for name, count in zip(s.class_names, s.class_counts())}
    assert counts[mini_classes("train", 4)[0]] == 2 and counts[mini_classes("test", 3)[2]] == 2
    assert sum(counts.values()) == 9 * 3 - 2
    for split in dataset.splits.values():
        for label, name in enumerate(split.class_names):
            rows = split.images[split.labels == label]
            expected = torch.tensor(class_color(colors[name]), dtype=torch.float32).view(1, 3)
            assert torch.allclose(rows[:, :, 40, 40].float(), expected.expand(len(rows), 3), atol=2)
    # A second load comes from the disk cache and is identical.
    again = miniimagenet.load(DatasetConfig(name="mini-imagenet", root=str(tmp_path)))
    assert torch.equal(again.splits["train"].images, dataset.splits["train"].images)


def test_mini_imagenet_images_in_class_subfolders(tmp_path):
    make_mini_imagenet_csv(tmp_path, classes=(3, 2, 2), per_class=2)
    images = tmp_path / "images"
    for path in list(images.glob("*.png")):
        (images / path.name[:9]).mkdir(exist_ok=True)
        path.rename(images / path.name[:9] / path.name)
    dataset = miniimagenet.load(DatasetConfig(name="mini-imagenet", root=str(tmp_path)))
    assert not dataset.skipped_files and len(dataset.splits["train"]) == 6


def test_mini_imagenet_not_found_names_both_layouts(tmp_path):
    (tmp_path / "train.csv").write_text("filename,label\n")
    with pytest.raises(DatasetError) as info:
        miniimagenet.load(DatasetConfig(name="mini-imagenet", root=str(tmp_path)))
    message = str(info.value)
    assert str(tmp_path) in message
    assert "train.csv" in message and "images/" in message and "mini-imagenet-cache-train.pkl" in message
    assert "Found only train.csv" in message


def test_mini_imagenet_bad_csv_and_overlapping_classes(tmp_path):
    make_mini_imagenet_csv(tmp_path, classes=(2, 2, 2), per_class=1)
    (tmp_path / "val.csv").write_text("file,class\nx.png,n1\n")
    with pytest.raises(DatasetError, match="val.csv must start with the header 'filename,label'"):
        miniimagenet.load(DatasetConfig(name="mini-imagenet", root=str(tmp_path)))
    train_class = mini_classes("train", 2)[0]
    (tmp_path / "val.csv").write_text(f"filename,label\n{train_class}00000000.png,{train_class}\n")
    with pytest.raises(DatasetError, match=f"'{train_class}' is listed in both train.csv and val.csv"):
        miniimagenet.load(DatasetConfig(name="mini-imagenet", root=str(tmp_path)))


def test_mini_imagenet_corrupt_pickle(tmp_path):
    make_mini_imagenet_pickles(tmp_path, classes=(2, 2, 2), per_class=1)
    (tmp_path / "mini-imagenet-cache-test.pkl").write_bytes(pickle.dumps({"images": [1, 2]}))
    with pytest.raises(DatasetError, match="mini-imagenet-cache-test.pkl is not a readable"):
        miniimagenet.load(DatasetConfig(name="mini-imagenet", root=str(tmp_path)))
