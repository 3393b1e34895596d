"""The bundled demo models of "Try a task": how their preprocessing frames strokes, and how it holds up on the
kinds of images people give it.

    python bench/demo_models.py frames                    # the stroke frames of STROKE_FRAMES, measured
    python bench/demo_models.py inputs --model demo       # accuracy on altered Omniglot drawings, framed or not
    python bench/demo_models.py slim RUN/checkpoints/best.pt resources/demo/NAME.pt   # weights only, to bundle

``frames`` measures, on 600 random Omniglot background drawings (seed 0, 105 px, binary) and 116 glyph renders
at 105 px, the longer side of the ink's bounding box and the stroke width (tryatask.stroke_width) as
fractions of the image side, and where the bounding box's centre lies.

``inputs`` draws fixed 5-way 1-shot tasks (``--episodes``, seed ``--seed``) from the Omniglot evaluation alphabets
(never trained on), 1 support and ``--queries`` query drawings per character, and classifies them with the model
through Try a task's own path (TaskImage -> preprocess -> adapt / predict) after altering every image (support
and queries alike, each with its own random draw) as:

* original: the 105 px file as it is;
* small and off-centre: shrunk to 25-45% on a 400x300 white page at a random place;
* sketch pad: a 224 px canvas with the character small (30-50%) and 12 px strokes, the pad's pen width;
* light on dark: inverted and enlarged to 150-300 px;
* photo: a 640x480 grey page (paper 150-215, ink 30-90) with a lighting gradient, blur, noise and JPEG (q 70).

Each alteration is classified twice: with the model's stroke framing (the app) and with the plain resize
(+ inversion) that Try a task did before. Accuracy is the mean over episodes with its 95% CI.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.core.runs import load_model  # noqa: E402
from workbench.core.stats import mean_ci95  # noqa: E402
from workbench.core.tryatask import (TaskImage, preprocess, resolve_model_source, stroke_frame,  # noqa: E402
                                     stroke_width, to_model_input)

DATA = Path("/work/shared/data/omniglot")


def _stats(ink: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.nonzero(ink)
    side = ink.shape[0]
    extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) / side
    width = stroke_width(ink) / side
    return extent, width, (cols.max() + cols.min()) / 2 / side, (rows.max() + rows.min()) / 2 / side


def cmd_frames(args) -> None:
    from workbench.core.data.glyphs import render_glyph

    files = sorted((args.data / "images_background").glob("*/*/*.png"))
    random.Random(0).shuffle(files)
    sets = {"omniglot": [_stats(np.asarray(Image.open(f).convert("L")) < 128) for f in files[:600]],
            "glyphs": [_stats(render_glyph(c, s, size=105) < 128) for c in range(0, 400, 7) for s in (0, 5)]}
    print("| data | extent median (p10-p90) | stroke width median (p10-p90), px at 105 | box centre x, y |")
    print("|---|---|---|---|")
    for name, rows in sets.items():
        a = np.array(rows)
        p = lambda col, k=1: f"{np.median(a[:, col]) * k:.3f} ({np.percentile(a[:, col], 10) * k:.3f}-" \
                             f"{np.percentile(a[:, col], 90) * k:.3f})"
        print(f"| {name} ({len(a)}) | {p(0)} | {p(1, 105)} | {np.median(a[:, 2]):.3f}, {np.median(a[:, 3]):.3f} |")


# --- altered drawings ----------------------------------------------------------------------------------------

def _ink_of(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) < 128


def _scaled(ink: np.ndarray, side: int) -> np.ndarray:
    image = Image.fromarray(ink.astype(np.uint8) * 255).resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(image) >= 128


def _crop(ink: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(ink)
    return ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _paste(ink: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    page = np.zeros(shape, bool)
    top = int(rng.integers(0, shape[0] - ink.shape[0] + 1))
    left = int(rng.integers(0, shape[1] - ink.shape[1] + 1))
    page[top:top + ink.shape[0], left:left + ink.shape[1]] = ink
    return page


def _encoded(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def alter(path: Path, kind: str, rng: np.random.Generator) -> TaskImage:
    if kind == "original":
        return TaskImage.from_file(path)
    ink = _ink_of(path)
    if kind == "small":
        # Omniglot's characters span about 0.66 of their image, so the image is scaled to span the page's share.
        char = _crop(_scaled(ink, int(300 * rng.uniform(0.25, 0.45) / 0.66)))
        page = _paste(char, (300, 400), rng)
        return TaskImage(path.name, data=_encoded(np.where(page, 0, 255).astype(np.uint8)))
    if kind == "sketch":
        side = int(224 * rng.uniform(0.30, 0.50) / 0.66)
        small = _crop(_scaled(ink, side))
        page = np.pad(_paste(small, (224 - 12, 224 - 12), rng), 6)
        # Thickened from Omniglot's 5.5 px (at 105) to the pad's 12 px pen.
        radius = max(1, round((12 - 5.5 * side / 105) / 2))
        yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
        page = ndimage.binary_dilation(page, structure=(yy ** 2 + xx ** 2) <= radius ** 2)
        return TaskImage(path.name, data=_encoded(np.where(page, 0, 255).astype(np.uint8)), drawn=True)
    if kind == "inverted":
        side = int(rng.integers(150, 301))
        return TaskImage(path.name, data=_encoded(np.where(_scaled(ink, side), 255, 0).astype(np.uint8)))
    if kind == "photo":
        char = _crop(_scaled(ink, int(480 * rng.uniform(0.4, 0.6) / 0.66)))
        page = _paste(char, (480, 640), rng).astype(np.float64)
        page = ndimage.gaussian_filter(page, 1.5)
        paper, ink_level = rng.uniform(150, 215), rng.uniform(30, 90)
        yy, xx = np.mgrid[0:480, 0:640]
        angle = rng.uniform(0, 2 * np.pi)
        light = 30 * ((np.cos(angle) * xx / 640 + np.sin(angle) * yy / 480) - 0.5)
        pixels = (paper + light) * (1 - page) + ink_level * page + rng.normal(0, 6, page.shape)
        rgb = np.repeat(np.clip(pixels, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
        return TaskImage(path.name + ".jpg", data=_encoded(rgb, "JPEG", quality=70))
    raise ValueError(kind)


KINDS = ("original", "small", "sketch", "inverted", "photo")


def cmd_inputs(args) -> None:
    torch.set_num_threads(1)
    model = load_model(resolve_model_source(args.model))
    frame = stroke_frame(model)
    characters = sorted(p for p in (args.data / "images_evaluation").glob("*/*") if p.is_dir())
    picker = random.Random(args.seed)
    episodes = []
    for _ in range(args.episodes):
        chosen = picker.sample(characters, args.ways)
        episodes.append([picker.sample(sorted(c.glob("*.png")), 1 + args.queries) for c in chosen])
    print(f"{args.model}: {args.ways}-way 1-shot, {args.queries} queries per class, {args.episodes} episodes "
          f"(seed {args.seed}) of the Omniglot evaluation alphabets; frame {frame}")
    print("| images | stroke framing (the app) | plain resize |")
    print("|---|---|---|")
    algorithm, spec = model.algorithm, model.spec
    algorithm.eval()
    for kind in args.kinds:
        rng = np.random.default_rng(args.seed)
        scores = {True: [], False: []}
        for episode in episodes:
            support = [alter(files[0], kind, rng) for files in episode]
            queries = [alter(f, kind, rng) for files in episode for f in files[1:]]
            truth = np.repeat(np.arange(args.ways), args.queries)
            for framed in (True, False):
                use = frame if framed else None
                s, _, bad_s = preprocess(support, spec, use)
                q, _, bad_q = preprocess(queries, spec, use)
                assert not bad_s and not bad_q, bad_s + bad_q
                torch.manual_seed(0)
                adapted = algorithm.adapt(to_model_input(s, spec), torch.arange(args.ways), args.ways)
                with torch.no_grad():
                    predicted = algorithm.predict(adapted, to_model_input(q, spec)).argmax(1).numpy()
                scores[framed].append(float((predicted == truth).mean()))
        cells = [f"{m * 100:.1f}% ± {c * 100:.1f}" for m, c in (mean_ci95(scores[True]), mean_ci95(scores[False]))]
        print(f"| {kind} | {cells[0]} | {cells[1]} |", flush=True)


def cmd_slim(args) -> None:
    from workbench.core.checkpoints import read_checkpoint, weights_only_payload
    from workbench.core.fileio import atomic_write

    slim = weights_only_payload(read_checkpoint(args.source))
    atomic_write(args.target, lambda tmp: torch.save(slim, tmp))
    print(f"{args.target}: {args.target.stat().st_size:,} bytes (from {args.source.stat().st_size:,})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="Omniglot root (images_background, images_evaluation)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("frames", help="measure the stroke frames")
    inputs = sub.add_parser("inputs", help="accuracy on altered drawings, framed or not")
    inputs.add_argument("--model", default="demo", help="a bundled model's name, a run or a checkpoint")
    inputs.add_argument("--episodes", type=int, default=100)
    inputs.add_argument("--ways", type=int, default=5)
    inputs.add_argument("--queries", type=int, default=3)
    inputs.add_argument("--seed", type=int, default=0)
    inputs.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    slim = sub.add_parser("slim", help="write a checkpoint without optimizer and RNG state, to bundle")
    slim.add_argument("source", type=Path, help="a run's checkpoints/best.pt")
    slim.add_argument("target", type=Path, help="e.g. resources/demo/NAME.pt")
    args = parser.parse_args()
    {"frames": cmd_frames, "inputs": cmd_inputs, "slim": cmd_slim}[args.command](args)


if __name__ == "__main__":
    main()
