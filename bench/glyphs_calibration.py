"""Calibrate the built-in glyphs dataset: is it fast to make, and is it a real few-shot problem?

Measures (a) generation speed, (b) an untrained (random init, eval mode) Conv-4 ProtoNet on fixed 5-way 1-shot
meta-test episodes, (c) the same after plain ProtoNet training, and optionally (d) the untrained check on real
Omniglot (images_evaluation) for comparison. Targets: untrained < 62% (Omniglot ~58%), trained >= 90% after
2,000 steps of 5-way 1-shot, 15-query episodes.

    python bench/glyphs_calibration.py --steps 2000 --omniglot ../shared/data/omniglot
    python bench/glyphs_calibration.py --steps 300 --set control_jitter=0.08   # try a design change
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.core.algorithms.base import ModelSpec  # noqa: E402
from workbench.core.algorithms.protonet import ProtoNet  # noqa: E402
from workbench.core.data import glyphs  # noqa: E402
from workbench.core.data.base import ClassSplit, FewShotDataset, PreprocessSpec  # noqa: E402
from workbench.core.data.episodes import EpisodeSampler, FixedEpisodes  # noqa: E402


def parse_overrides(items: list[str]) -> dict:
    fields = {f.name: f for f in dataclasses.fields(glyphs.GlyphParams)}
    values = {}
    for item in items:
        name, _, text = item.partition("=")
        if name not in fields:
            raise SystemExit(f"--set {item}: unknown parameter; known: {', '.join(fields)}")
        default = getattr(glyphs.DEFAULT_PARAMS, name)
        if isinstance(default, tuple):
            values[name] = tuple(int(v) for v in text.split(","))
        else:
            values[name] = type(default)(text)
    return values


def measure_loading(params: glyphs.GlyphParams) -> FewShotDataset:
    """Time a first load (design + drawing + cache write) and a second load (cache hit) in a fresh cache dir."""
    glyphs.alphabet.cache_clear()
    glyphs._drawer_styles.cache_clear()
    with tempfile.TemporaryDirectory() as folder:
        os.environ[glyphs.CACHE_ENV_VAR] = folder
        start = time.perf_counter()
        dataset = glyphs.make_glyphs(params)
        first = time.perf_counter() - start
        start = time.perf_counter()
        _, from_cache = glyphs.generate(params)
        second = time.perf_counter() - start
    images = params.num_classes * params.samples_per_class
    print(f"(a) generation: {images:,} images in {first:.1f} s = {images / first:,.0f} images/s (1 thread, "
          f"including alphabet design and cache write); cached load {second:.2f} s (cache hit: {from_cache})")
    return dataset


def make_protonet(seed: int, spec: PreprocessSpec, train_classes: int) -> ProtoNet:
    torch.manual_seed(seed)
    return ProtoNet(ProtoNet.build_hparams({}), ModelSpec(spec.channels, spec.image_size, 5, train_classes))


def evaluate(model: ProtoNet, episodes: FixedEpisodes) -> tuple[float, float]:
    """Mean query accuracy over the episodes and its 95% confidence half-width."""
    scores = []
    for episode in episodes:
        adapted = model.adapt(episode.support_x, episode.support_y, episode.ways)
        probs = model.predict(adapted, episode.query_x)
        scores.append(float((probs.argmax(-1) == episode.query_y).float().mean()))
    values = np.array(scores)
    return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))


def train(model: ProtoNet, split: ClassSplit, spec: PreprocessSpec, steps: int, seed: int, lr: float = 1e-3,
          queries: int = 15, report_every: int = 250) -> float:
    model.configure_optimizers(lr, steps, "cosine")
    sampler = EpisodeSampler(split, spec, 5, 1, queries, seed=seed)
    start = time.perf_counter()
    recent = []
    for step in range(1, steps + 1):
        stats = model.meta_train_step([sampler.sample()])
        recent.append(stats["accuracy"])
        if step % report_every == 0 or step == steps:
            print(f"  step {step:5d}  train acc (last {len(recent)}) {np.mean(recent):.3f}  "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            recent = []
    return time.perf_counter() - start


def load_omniglot_evaluation(root: Path, size: int = 28) -> tuple[ClassSplit, PreprocessSpec]:
    """Omniglot's evaluation alphabets (659 characters), resized with antialiasing like the glyphs."""
    from PIL import Image

    folder = root / "images_evaluation"
    characters = sorted(p for p in folder.glob("*/*") if p.is_dir())
    if not characters:
        raise SystemExit(f"no Omniglot characters under {folder}")
    images, labels, names = [], [], []
    for label, character in enumerate(characters):
        for file in sorted(character.glob("*.png")):
            with Image.open(file) as img:
                images.append(np.asarray(img.convert("L").resize((size, size), Image.BILINEAR, reducing_gap=None)))
            labels.append(label)
        names.append(f"{character.parent.name}/{character.name}")
    x = torch.from_numpy(np.stack(images))[:, None]
    scaled = x.float() / 255
    spec = PreprocessSpec(size, 1, (float(scaled.mean()),), (float(scaled.std()),), "dark")
    return ClassSplit(x, torch.tensor(labels), names), spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="training steps (0 skips training)")
    parser.add_argument("--episodes", type=int, default=1000, help="fixed 5-way 1-shot test episodes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the network and training episodes")
    parser.add_argument("--episode-seed", type=int, default=12345, help="seed of the fixed test episodes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--omniglot", type=Path, default=None, help="Omniglot root for the untrained comparison")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a GlyphParams field (design experiments)")
    parser.add_argument("--save-grid", type=Path, default=None, help="write a PNG of sample glyphs here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    params = dataclasses.replace(glyphs.DEFAULT_PARAMS, **parse_overrides(args.set))
    print(f"generator v{glyphs.GENERATOR_VERSION}, params: {params}")

    dataset = measure_loading(params)
    for name, split in dataset.splits.items():
        print(f"    {name}: {split.num_classes} classes, {len(split)} images, "
              f"{len(set(split.class_groups))} alphabets")
    pixels = dataset.splits["train"].images.float() / 255
    print(f"    pixel mean {pixels.mean():.3f} std {pixels.std():.3f} "
          f"(spec {dataset.spec.mean[0]:.3f} / {dataset.spec.std[0]:.3f})")
    if args.save_grid:
        save_grid(params, args.save_grid)

    spec = dataset.spec
    test = FixedEpisodes(dataset.splits["test"], spec, 5, 1, 15, args.episodes, args.episode_seed)
    model = make_protonet(args.seed, spec, dataset.splits["train"].num_classes)
    mean, ci = evaluate(model, test)
    print(f"(b) untrained ProtoNet, {args.episodes} 5-way 1-shot test episodes: {100 * mean:.2f} +- {100 * ci:.2f} %")

    if args.steps > 0:
        print(f"(c) training ProtoNet for {args.steps} steps (5-way 1-shot, 15 queries, Adam 1e-3 cosine)")
        seconds = train(model, dataset.splits["train"], spec, args.steps, args.seed)
        mean, ci = evaluate(model, test)
        print(f"    trained ProtoNet: {100 * mean:.2f} +- {100 * ci:.2f} % after {args.steps} steps "
              f"({seconds:.0f} s, {seconds / args.steps:.3f} s/step)")

    if args.omniglot:
        split, ospec = load_omniglot_evaluation(args.omniglot)
        episodes = FixedEpisodes(split, ospec, 5, 1, 15, args.episodes, args.episode_seed)
        model = make_protonet(args.seed, ospec, 964)
        mean, ci = evaluate(model, episodes)
        print(f"(d) untrained ProtoNet on Omniglot evaluation ({split.num_classes} characters): "
              f"{100 * mean:.2f} +- {100 * ci:.2f} %")


def save_grid(params: glyphs.GlyphParams, path: Path, classes: int = 16, samples: int = 10) -> None:
    """Rows: the first characters of the first meta-test alphabet, then characters of other alphabets."""
    from PIL import Image

    first_test = params.split_class_ranges()["test"].start
    ids = list(range(first_test, first_test + classes // 2))
    ids += list(range(0, params.num_classes, max(1, params.num_classes // (classes - len(ids)))))[: classes - len(ids)]
    rows = [np.concatenate(list(glyphs.render_class(params, c)[:samples]), axis=1) for c in ids]
    grid = np.concatenate(rows, axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)
    print(f"    sample grid written to {path}")


if __name__ == "__main__":
    main()
