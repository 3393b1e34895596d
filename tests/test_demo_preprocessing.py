"""Try a task's stroke framing (workbench.core.tryatask.frame_strokes): what people give the demo models (sketch-pad
drawings, photos and scans of ink on paper, either way round, any size) is centred and scaled like the training
data's drawings; tested on constructed images, each path on its own."""

from __future__ import annotations

import io
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from workbench.core.errors import ImageLoadError
from workbench.core.runs import load_model
from workbench.core.tryatask import (STROKE_FRAMES, Task, TaskImage, classify, frame_strokes, ink_mask,
                                     resolve_model_source, stroke_frame)

OMNIGLOT = STROKE_FRAMES["omniglot"]
SIDE = OMNIGLOT.resolution

# Polylines in a unit box: distinct characters.
SHAPES = {
    "hook": [[(0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.4, 0.9)]],
    "cross": [[(0.5, 0.0), (0.5, 1.0)], [(0.0, 0.5), (1.0, 0.5)]],
    "zigzag": [[(0.0, 0.2), (0.3, 0.8), (0.6, 0.2), (1.0, 0.8)]],
}


def draw(shape: str, canvas=(224, 224), box=(0.2, 0.2, 0.6), pen: int = 12, ink: int = 0, paper: int = 255
         ) -> np.ndarray:
    """uint8 [H, W]: ``shape`` drawn with a round pen inside a square box (left, top, side as fractions of the
    canvas height)."""
    width, height = canvas
    image = Image.new("L", canvas, paper)
    pen_draw = ImageDraw.Draw(image)
    left, top, side = (v * height for v in box)
    for line in SHAPES[shape]:
        points = [(left + x * side, top + y * side) for x, y in line]
        pen_draw.line(points, fill=ink, width=pen, joint="curve")
        for x, y in points:
            pen_draw.ellipse((x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2), fill=ink)
    return np.asarray(image)


def photo(gray: np.ndarray, seed: int = 0, paper=(150, 205), ink: int = 60) -> bytes:
    """``gray`` (0 ink, 255 paper) as a JPEG photo: grey paper lit unevenly, blurred ink, sensor noise, RGB."""
    rng = np.random.default_rng(seed)
    height, width = gray.shape
    blurred = np.asarray(Image.fromarray(gray).filter(ImageFilter.GaussianBlur(2)), np.float64) / 255
    light = np.linspace(paper[0], paper[1], width)[None, :].repeat(height, 0)
    pixels = light * blurred + ink * (1 - blurred) + rng.normal(0, 6, gray.shape)
    rgb = np.repeat(np.clip(pixels, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=70)
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def framed(pixels: np.ndarray) -> np.ndarray:
    """bool [105, 105]: the ink after framing for an Omniglot model."""
    return frame_strokes(pixels, OMNIGLOT, SIDE) < 128


def agreement(a: np.ndarray, b: np.ndarray, pixels: int = 2) -> float:
    """The smaller of: the share of a's ink within ``pixels`` of b's, and of b's within ``pixels`` of a's."""
    from scipy import ndimage

    near_a, near_b = (ndimage.binary_dilation(m, iterations=pixels) for m in (a, b))
    return float(min((a & near_b).sum() / max(a.sum(), 1), (b & near_a).sum() / max(b.sum(), 1)))


def geometry(ink: np.ndarray) -> tuple[float, float, float, float]:
    """Longer side of the bounding box and stroke width (fractions of the side), box centre x, y (pixels)."""
    from scipy import ndimage

    rows, cols = np.nonzero(ink)
    extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) / ink.shape[0]
    width = 2 * ink.sum() / (ink & ~ndimage.binary_erosion(ink)).sum() / ink.shape[0]
    return extent, width, (cols.max() + cols.min()) / 2, (rows.max() + rows.min()) / 2


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return framed(draw("hook"))


def test_a_sketch_pad_drawing_is_centred_scaled_and_drawn_at_the_training_stroke_width(reference):
    extent, width, cx, cy = geometry(reference)
    assert extent == pytest.approx(OMNIGLOT.extent, abs=0.03)
    assert width == pytest.approx(OMNIGLOT.width, abs=1.5 / SIDE)
    assert cx == pytest.approx((SIDE - 1) / 2, abs=1.5) and cy == pytest.approx((SIDE - 1) / 2, abs=1.5)


@pytest.mark.parametrize("how", ["small in a corner, thick pen", "large, thin pen", "wide page, off-centre"])
def test_size_place_and_pen_do_not_matter(reference, how):
    pixels = {"small in a corner, thick pen": draw("hook", box=(0.02, 0.65, 0.3), pen=16),
              "large, thin pen": draw("hook", canvas=(800, 800), box=(0.05, 0.05, 0.9), pen=3),
              "wide page, off-centre": draw("hook", canvas=(1200, 500), box=(1.6, 0.1, 0.35), pen=9)}[how]
    result = framed(pixels)
    assert agreement(result, reference) > 0.95
    assert np.allclose(geometry(result), geometry(reference), atol=[0.02, 1.5 / SIDE, 1.5, 1.5])


def test_light_strokes_on_a_dark_background_are_inverted(reference):
    light_on_dark = draw("hook", ink=255, paper=0)
    assert np.array_equal(framed(light_on_dark), reference)
    grey = draw("hook", ink=230, paper=40)  # a chalkboard: neither pure
    assert agreement(framed(grey), reference) > 0.95


def test_a_photo_of_ink_on_grey_unevenly_lit_paper_is_cleaned(reference):
    big = draw("hook", canvas=(1600, 1200), box=(0.3, 0.25, 0.5), pen=30)
    image = TaskImage("photo.jpg", data=photo(big))
    ink = ink_mask(decoded(image.data))
    truth = big < 128
    assert agreement(ink, truth) > 0.9  # the strokes, not the darker side of the page, nor specks of noise
    loaded = image.load(load_model(resolve_model_source("protonet-omniglot")).spec, OMNIGLOT)
    assert loaded.shape == (28, 28, 1)
    assert agreement(framed(decoded(image.data)), reference) > 0.9


def test_an_image_already_framed_like_the_training_data_is_kept():
    side, extent = SIDE, OMNIGLOT.extent
    pixels = draw("zigzag", canvas=(side, side), box=((1 - extent) / 2, (1 - extent) / 2, extent),
                  pen=round(OMNIGLOT.width * side))
    assert agreement(framed(pixels), pixels < 128) > 0.9


def test_blank_and_flat_images_are_refused_with_a_reason():
    spec = load_model(resolve_model_source("demo")).spec
    blank = {"white.png": np.full((60, 80), 255, np.uint8), "grey.png": np.full((50, 50), 128, np.uint8),
             "faint.png": draw("cross", ink=245, paper=255),
             "lit paper.jpg": decoded(photo(np.full((300, 400), 255, np.uint8)))}  # no ink, uneven light
    for name, pixels in blank.items():
        assert not framed(pixels).any()
        with pytest.raises(ImageLoadError, match="no strokes found") as caught:
            TaskImage.from_array(pixels, name).load(spec, OMNIGLOT)
        assert name in str(caught.value)


def test_each_model_gets_its_training_data_frame():
    omniglot, glyphs = (load_model(resolve_model_source(n)) for n in ("protonet-omniglot", "protonet-glyphs"))
    assert stroke_frame(omniglot) == STROKE_FRAMES["omniglot"]
    assert stroke_frame(glyphs) == STROKE_FRAMES["glyphs"]
    # Photos ("natural") and datasets without a measured frame are only resized.
    natural = SimpleNamespace(spec=replace(omniglot.spec, foreground="natural"), config=omniglot.config)
    assert stroke_frame(natural) is None
    other = SimpleNamespace(spec=glyphs.spec, config=SimpleNamespace(dataset=SimpleNamespace(name="folder")))
    assert stroke_frame(other) is None


def test_the_omniglot_demo_reads_drawings_photos_and_inverted_scans_alike():
    """Support: one sketch-pad drawing per character; queries: the same characters drawn elsewhere at other sizes,
    photographed, or light on dark."""
    model = load_model(resolve_model_source("demo"))
    task = Task()
    for name in SHAPES:
        task.add_class(name)
        task.add_support(name, [TaskImage.from_array(draw(name), f"{name}.png", drawn=True)])
    truth = []
    for seed, name in enumerate(SHAPES):
        task.add_queries([
            TaskImage.from_array(draw(name, canvas=(300, 200), box=(0.9, 0.5, 0.4), pen=6), f"{name}-small.png"),
            TaskImage(f"{name}-photo.jpg", data=photo(draw(name, canvas=(900, 700), box=(0.2, 0.2, 0.6), pen=20),
                                                       seed)),
            TaskImage.from_array(draw(name, ink=255, paper=0, pen=14), f"{name}-inverted.png"),
        ])
        truth += [name] * 3
    result = classify(model, task)
    assert not result.problems
    assert [p.predicted for p in result.predictions] == truth
