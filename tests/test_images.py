"""Safe image loading: every odd or hostile file either converts correctly or gives a readable ImageLoadError."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from fixtures_data import png_header_only, write_corrupt_png
from workbench.core.data.base import Cancelled
from workbench.core.data.images import (cache_dir, load_image, load_many, load_pickle, read_cache, scan_images,
                                        write_cache)
from workbench.core.errors import ImageLoadError


def reason_of(source, **kwargs) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_image(source, **{"channels": 3, **kwargs})
    assert info.value.reason and str(info.value).startswith(str(info.value.path))
    return info.value.reason.lower()


def test_plain_rgb_png_round_trips(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (12, 17, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png", 3)
    assert out.dtype == np.uint8 and out.shape == (12, 17, 3)
    assert np.array_equal(out, pixels)


def test_bytes_input_and_grayscale_conversion(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (255, 0, 0)).save(buffer, format="PNG")
    gray = load_image(buffer.getvalue(), 1)
    assert gray.shape == (6, 8, 1)
    assert abs(int(gray[0, 0, 0]) - 76) <= 1  # ITU-R 601 luma of pure red
    rgb = load_image(buffer.getvalue(), 3)
    assert rgb.shape == (6, 8, 3) and tuple(rgb[0, 0]) == (255, 0, 0)
    # A grayscale file asked for 3 channels repeats the grey level.
    Image.new("L", (5, 5), 90).save(tmp_path / "g.png")
    assert np.all(load_image(tmp_path / "g.png", 3) == 90)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = load_image(tmp_path / "deep.png", 1)[:, :, 0].astype(int)
    expected = np.rint(ramp / 257.0).astype(int)
    assert np.abs(out - expected).max() <= 1
    # Clipping would saturate everything above 255 (almost the whole ramp) to white.
    assert (out == 255).mean() < 0.02 and 120 <= out[32, 0] <= 135


def test_32bit_integer_image_with_16bit_range():
    buffer = io.BytesIO()
    Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32), "I").save(buffer, format="TIFF")
    out = load_image(buffer.getvalue(), 1)[0, :, 0]
    assert list(out) == [0, 128, 255]


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_rgba_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # fully transparent (black underneath)
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black
    out = load_image(_png_bytes(Image.fromarray(rgba, "RGBA")), 3)
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert all(120 <= v <= 135 for v in out[0, 2])


def test_la_image_transparency_becomes_white():
    la = Image.new("LA", (3, 3), (0, 0))
    la.putpixel((1, 1), (0, 255))
    out = load_image(_png_bytes(la), 1)[:, :, 0]
    assert out[0, 0] == 255 and out[1, 1] == 0


def test_cmyk_jpeg_converts_to_rgb():
    buffer = io.BytesIO()
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(buffer, format="JPEG", quality=95)  # pure cyan ink
    out = load_image(buffer.getvalue(), 3)
    r, g, b = (int(v) for v in out[8, 8])
    assert r < 60 and g > 200 and b > 200


def test_palette_images_with_and_without_transparency():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert tuple(load_image(_png_bytes(palette), 3)[0, 0]) == (10, 200, 30)
    palette.putpixel((0, 0), 0)
    palette.info["transparency"] = 0
    out = load_image(_png_bytes(palette), 3)
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (10, 200, 30)


def test_one_bit_image():
    image = Image.new("1", (5, 5), 1)
    image.putpixel((2, 2), 0)
    out = load_image(_png_bytes(image), 1)[:, :, 0]
    assert out[0, 0] == 255 and out[2, 2] == 0


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    out = load_image(tmp_path / "anim.gif", 3)
    r, g, b = (int(v) for v in out[4, 4])
    assert r > 200 and b < 50


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 10))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rotated.jpg", 1)
    assert out.shape == (20, 10, 1)  # height and width swapped
    assert out[2, 5, 0] > 200 and out[17, 5, 0] < 50  # white half is now on top


def test_resize_is_antialiased():
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = load_image(_png_bytes(Image.fromarray(checker)), 1, size=16)[:, :, 0].astype(float)
    assert out.shape == (16, 16)
    # Point sampling would give pure black or white; antialiasing averages to grey.
    assert abs(out.mean() - 127.5) < 10 and out.std() < 10


def test_resize_to_height_width_tuple():
    out = load_image(_png_bytes(Image.new("RGB", (40, 40), (1, 2, 3))), 3, size=(10, 20))
    assert out.shape == (10, 20, 3) and tuple(out[5, 5]) == (1, 2, 3)


def test_text_file_named_png(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image\n")
    assert "not an image" in reason_of(tmp_path / "notes.png")


def test_truncated_png(tmp_path):
    path = write_corrupt_png(tmp_path / "cut.png")
    reason = reason_of(path)
    assert "truncated" in reason or "corrupt" in reason


def test_truncated_jpeg(tmp_path):
    noise = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    reason = reason_of(tmp_path / "cut.jpg")
    assert "truncated" in reason or "corrupt" in reason


def test_corrupt_png_chunk(tmp_path):
    good = _png_bytes(Image.new("RGB", (30, 30), (9, 9, 9)))
    # Flip bytes inside the compressed image data.
    start = good.index(b"IDAT") + 8
    bad = good[:start] + bytes(b ^ 0xFF for b in good[start:start + 12]) + good[start + 12:]
    (tmp_path / "bad.png").write_bytes(bad)
    reason_of(tmp_path / "bad.png")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns, then we refuse
@pytest.mark.parametrize("side", [50_000, 12_000])  # 2,500 MP (Pillow's hard limit) and 144 MP (its warning zone)
def test_decompression_bomb_is_refused(tmp_path, side):
    path = tmp_path / f"bomb{side}.png"
    path.write_bytes(png_header_only(side, side))
    assert path.stat().st_size < 1000
    reason = reason_of(path)
    assert "too large" in reason and "100 megapixels" in reason


def test_missing_empty_and_folder(tmp_path):
    assert "does not exist" in reason_of(tmp_path / "nope.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert "empty" in reason_of(tmp_path / "empty.jpg")
    assert "folder" in reason_of(tmp_path)
    assert "empty" in reason_of(b"")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.png"
    Image.new("RGB", (3, 3)).save(path)
    path.chmod(0)
    assert "permission" in reason_of(path)


def test_scan_images_sorted_and_filtered(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.jpeg", "notes.txt", ".hidden.png", "._a.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()
    assert [p.name for p in scan_images(tmp_path)] == ["a.jpg", "b.PNG", "c.jpeg"]
    assert [p.name for p in scan_images(tmp_path, recursive=True)] == ["a.jpg", "b.PNG", "c.jpeg", "d.png"]


@pytest.mark.parametrize("workers", [1, 2])
def test_load_many_skips_bad_files_and_keeps_order(tmp_path, workers):
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (10 + i, 12), (i * 40, 0, 0)).save(path)
        paths.append(path)
    (tmp_path / "2.png").write_text("garbage")
    paths.append(tmp_path / "missing.png")
    calls = []
    images, ok, skipped = load_many(paths, 3, 8, lambda d, t, m: calls.append((d, t)), workers=workers)
    assert images.shape == (5, 8, 8, 3) and images.dtype == np.uint8
    assert ok == [paths[i] for i in (0, 1, 3, 4, 5)]
    assert [int(img[4, 4, 0]) for img in images] == [0, 40, 120, 160, 200]
    assert {p for p, _ in skipped} == {str(paths[2]), str(paths[6])}
    assert all(reason for _, reason in skipped)
    assert calls[-1] == (7, 7)


def test_load_many_without_size_skips_mismatched(tmp_path):
    for name, size in (("a.png", (5, 5)), ("b.png", (5, 5)), ("c.png", (6, 5))):
        Image.new("L", size).save(tmp_path / name)
    images, ok, skipped = load_many(scan_images(tmp_path), 1, None)
    assert images.shape == (2, 5, 5, 1)
    assert len(skipped) == 1 and "differs" in skipped[0][1]


def test_load_many_can_be_cancelled(tmp_path):
    paths = []
    for i in range(300):
        Image.new("L", (4, 4), i % 256).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")

    def cancel_later(done, total, message):
        if done > 50:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        load_many(paths, 1, 4, cancel_later, workers=2)


def test_cache_round_trip_and_corrupt_cache_is_dropped():
    assert "workbench-cache" in str(cache_dir())  # conftest isolates the cache per test
    arrays = {"images": np.arange(24, dtype=np.uint8).reshape(2, 3, 4), "names": np.array(["a", "b"])}
    path = write_cache("unit", "k1", arrays)
    assert path is not None and path.is_file()
    back = read_cache("unit", "k1", ("images", "names"))
    assert np.array_equal(back["images"], arrays["images"]) and back["names"].tolist() == ["a", "b"]
    assert read_cache("unit", "k1", ("images", "labels")) is None  # a cache lacking a field is rebuilt
    write_cache("unit", "k2", arrays)
    path = write_cache("unit", "k2", arrays)
    path.write_bytes(b"not a zip at all")
    assert read_cache("unit", "k2", ("images",)) is None
    assert not path.exists()
    assert read_cache("unit", "absent", ("images",)) is None


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited-marker",))


def test_load_pickle_reads_arrays_but_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("good.pkl", "wb") as handle:
        pickle.dump({"x": np.arange(5, dtype=np.uint8), "labels": [1, 2]}, handle, protocol=2)
    data = load_pickle("good.pkl")
    assert data["x"].tolist() == [0, 1, 2, 3, 4] and data["labels"] == [1, 2]
    with open("evil.pkl", "wb") as handle:
        pickle.dump({"x": _Exploit()}, handle)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_pickle("evil.pkl")
    assert not (tmp_path / "exploited-marker").exists()
