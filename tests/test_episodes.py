"""Episode sampling: seeded, well-formed, leak-free, and clear about impossible settings."""

from __future__ import annotations

import pytest
import torch

from workbench.core.data.base import ClassSplit, PreprocessSpec
from workbench.core.data.episodes import EpisodeSampler, FixedEpisodes, check_episode_setting
from workbench.core.errors import EpisodeError

SPEC = PreprocessSpec(image_size=8, channels=1, mean=(0.5,), std=(0.25,))


def make_split(counts: list[int], size: int = 8) -> ClassSplit:
    """Each image's first pixel holds its class, its second pixel its serial number."""
    images, labels = [], []
    serial = 0
    for label, count in enumerate(counts):
        for _ in range(count):
            image = torch.full((1, size, size), 100, dtype=torch.uint8)
            image[0, 0, 0] = label
            image[0, 0, 1] = serial
            images.append(image)
            labels.append(label)
            serial += 1
    return ClassSplit(torch.stack(images), torch.tensor(labels), [f"class{c}" for c in range(len(counts))])


SPLIT = make_split([7] * 10)


def same_episode(a, b) -> bool:
    return (a.class_ids == b.class_ids and torch.equal(a.support_index, b.support_index)
            and torch.equal(a.query_index, b.query_index) and torch.equal(a.support_x, b.support_x)
            and torch.equal(a.query_x, b.query_x))


def test_same_seed_same_episodes_different_seed_different():
    first = EpisodeSampler(SPLIT, SPEC, 5, 2, 3, seed=11).sample()
    a, b = EpisodeSampler(SPLIT, SPEC, 5, 2, 3, seed=11), EpisodeSampler(SPLIT, SPEC, 5, 2, 3, seed=11)
    c = EpisodeSampler(SPLIT, SPEC, 5, 2, 3, seed=12)
    run_a = [a.sample() for _ in range(5)]
    run_b = [b.sample() for _ in range(5)]
    run_c = [c.sample() for _ in range(5)]
    assert same_episode(first, run_a[0])
    assert all(same_episode(x, y) for x, y in zip(run_a, run_b))
    assert not all(same_episode(x, y) for x, y in zip(run_a, run_c))
    # Successive episodes of one sampler differ.
    assert not same_episode(run_a[0], run_a[1])


def test_fixed_episodes_identical_across_instances():
    one = FixedEpisodes(SPLIT, SPEC, 4, 1, 2, count=20, seed=5)
    two = FixedEpisodes(SPLIT, SPEC, 4, 1, 2, count=20, seed=5)
    other = FixedEpisodes(SPLIT, SPEC, 4, 1, 2, count=20, seed=6)
    assert len(one) == 20 and len(list(one)) == 20
    assert all(same_episode(x, y) for x, y in zip(one, two))
    assert same_episode(one[3], one[3])  # reading again gives the same task
    assert not all(same_episode(x, y) for x, y in zip(one, other))


def test_fixed_episodes_do_not_depend_on_sampler_use():
    fixed = FixedEpisodes(SPLIT, SPEC, 3, 1, 1, count=5, seed=9)
    before = [fixed[i] for i in range(5)]
    for _ in range(3):
        fixed.sampler.sample()  # drawing training episodes must not shift the fixed set
    assert all(same_episode(x, fixed[i]) for i, x in enumerate(before))


@pytest.mark.parametrize("ways,shots,queries", [(5, 1, 1), (5, 2, 3), (3, 5, 2), (10, 3, 4)])
def test_shapes_labels_and_no_overlap(ways, shots, queries):
    sampler = EpisodeSampler(SPLIT, SPEC, ways, shots, queries, seed=0)
    for _ in range(5):
        episode = sampler.sample()
        assert episode.support_x.shape == (ways * shots, 1, 8, 8)
        assert episode.query_x.shape == (ways * queries, 1, 8, 8)
        assert episode.support_x.dtype == torch.float32
        assert episode.support_y.tolist() == [w for w in range(ways) for _ in range(shots)]
        assert episode.query_y.tolist() == [w for w in range(ways) for _ in range(queries)]
        assert len(set(episode.class_ids)) == ways == episode.ways
        assert episode.class_names == [f"class{c}" for c in episode.class_ids]
        # No image is both support and query.
        assert not set(episode.support_index.tolist()) & set(episode.query_index.tolist())
        assert len(set(episode.query_index.tolist())) == ways * queries
        # Labels point at images of the right class.
        for index, y in zip(episode.support_index.tolist(), episode.support_y.tolist()):
            assert SPLIT.labels[index].item() == episode.class_ids[y]
        for index, y in zip(episode.query_index.tolist(), episode.query_y.tolist()):
            assert SPLIT.labels[index].item() == episode.class_ids[y]
        # The tensors are the normalized images of those rows.
        expected = SPEC.normalize(SPLIT.images[episode.query_index])
        assert torch.allclose(episode.query_x, expected)


def test_images_are_resized_to_the_spec():
    spec = PreprocessSpec(image_size=4, channels=1, mean=(0.5,), std=(0.25,))
    episode = EpisodeSampler(SPLIT, spec, 2, 1, 1, seed=0).sample()
    assert episode.support_x.shape == (2, 1, 4, 4)


def test_all_images_of_a_class_can_be_used():
    split = make_split([4] * 3)
    episode = EpisodeSampler(split, SPEC, 3, 1, 3, seed=0).sample()
    for c in range(3):
        rows = set(episode.support_index[episode.support_y == c].tolist()) | set(
            episode.query_index[episode.query_y == c].tolist())
        assert rows == set(torch.nonzero(split.labels == episode.class_ids[c]).flatten().tolist())


def test_too_many_shots_plus_queries_says_what_to_change():
    split = make_split([5, 5, 5, 5])
    with pytest.raises(EpisodeError) as info:
        EpisodeSampler(split, SPEC, 3, 2, 4, seed=0, split_name="test", dataset_name="toy")
    message = str(info.value)
    assert "k-shot + q-query" in message and "6" in message
    assert "meta-test" in message and "toy" in message
    assert "Lower" in message and "at most 5" in message


def test_more_ways_than_classes_says_what_to_change():
    with pytest.raises(EpisodeError) as info:
        check_episode_setting(make_split([5] * 4), 6, 1, 1, split_name="val")
    message = str(info.value)
    assert "only 4 classes" in message and "n-way = 6" in message
    assert "meta-validation" in message and "lower n-way to at most 4" in message


@pytest.mark.parametrize("ways,shots,queries", [(1, 1, 1), (2, 0, 1), (2, 1, 0)])
def test_degenerate_settings_are_rejected(ways, shots, queries):
    with pytest.raises(EpisodeError):
        check_episode_setting(SPLIT, ways, shots, queries)


def test_small_classes_are_excluded_not_sampled():
    split = make_split([2, 6, 6, 6])
    sampler = EpisodeSampler(split, SPEC, 3, 2, 2, seed=0)
    assert sampler.excluded_classes == ["class0"]
    for _ in range(10):
        assert 0 not in sampler.sample().class_ids
    # Too few eligible classes names a small class.
    with pytest.raises(EpisodeError, match="class0"):
        EpisodeSampler(split, SPEC, 4, 2, 2, seed=0)
