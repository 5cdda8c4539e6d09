"""cxr_tf.data.images: the 150 real films (6 RGBA), 16-bit, RGB, non-square, broken files."""

import io
import zlib

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import FULL_SIZE_FILMS
from cxr_tf.data.images import ImageError, encode_png, film_to_png, read_image, to_square

FILMS = FULL_SIZE_FILMS  # 7 real NIH films at 1024 px, two of them RGBA


def test_real_films_rgba_become_grey():
    rgba = []
    for path in FILMS:
        image = read_image(path)
        assert image.shape == (1024, 1024) and image.dtype == np.uint8
        if path.read_bytes()[25] == 6:  # PNG colour type 6: RGBA
            rgba.append(path.name)
            raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert raw.shape[2] == 4 and np.array_equal(image, raw[:, :, 0])  # grey stored as R=G=B, opaque
    assert len(FILMS) == 7 and len(rgba) == 2


def test_to_square_area_resize_of_real_film():
    film = read_image(FILMS[0])
    small = to_square(film, 64)
    assert small.shape == (64, 64) and small.dtype == np.uint8
    expected = film.reshape(64, 16, 64, 16).mean(axis=(1, 3))  # area = mean of each 16x16 block
    assert np.abs(small.astype(float) - expected).max() <= 1


def test_stored_png_is_lossless_and_up_filtered():
    # the records' PNG: exact pixels back through TensorFlow's decoder, and every row
    # "Up"-filtered (filter byte 2), the filter that decodes fastest for its size
    film = to_square(read_image(FILMS[0]), 224)
    png = film_to_png(FILMS[0], 224)[0]
    assert png == encode_png(film)
    np.testing.assert_array_equal(tf.io.decode_png(png, channels=1).numpy()[..., 0], film)
    idat, at = b"", 8
    while at < len(png):  # chunks: length, type, data, CRC
        length, kind = int.from_bytes(png[at:at + 4], "big"), png[at + 4:at + 8]
        idat += png[at + 8:at + 8 + length] if kind == b"IDAT" else b""
        at += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(224, 1 + 224)
    assert set(rows[:, 0]) == {2}


def test_non_square_is_centre_padded_with_black():
    wide = np.full((50, 100), 200, np.uint8)
    square = to_square(wide, 100)
    assert square.shape == (100, 100)
    assert (square[:25] == 0).all() and (square[75:] == 0).all() and (square[25:75] == 200).all()
    assert to_square(np.full((30, 10), 9, np.uint8), 60).shape == (60, 60)  # enlarging works too


def test_sixteen_bit_is_windowed_to_eight_bit():
    ramp = np.tile(np.linspace(100, 4095, 256).astype(np.uint16), (32, 1))  # 12-bit detector range
    ok, png = cv2.imencode(".png", ramp)
    image = read_image(png.tobytes())
    assert image.dtype == np.uint8 and image.min() == 0 and image.max() == 255
    assert (np.diff(image[0].astype(int)) >= 0).all()


def test_rgb_and_grey_alpha_and_jpeg():
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 2] = 255  # red
    image = read_image(cv2.imencode(".png", bgr)[1].tobytes())
    assert image.shape == (8, 8) and int(image[0, 0]) == 76  # ITU-R 601 luma of pure red
    buffer = io.BytesIO()
    Image.fromarray(np.stack([np.full((8, 8), 100, np.uint8), np.full((8, 8), 255, np.uint8)], -1), "LA").save(buffer, "PNG")
    assert (read_image(buffer.getvalue()) == 100).all()
    jpeg = cv2.imencode(".jpg", np.full((16, 16), 128, np.uint8))[1].tobytes()
    assert abs(int(read_image(jpeg).mean()) - 128) <= 2
    with pytest.raises(ImageError, match="truncated JPEG"):
        read_image(jpeg[: len(jpeg) // 2], name="cut.jpg")


def test_broken_inputs_raise_image_error_naming_file(tmp_path):
    data = FILMS[0].read_bytes()
    cases = {"empty.png": (b"", "empty file"),
             "truncated.png": (data[: len(data) // 2], "truncated PNG"),
             "header.png": (data[:20], "truncated PNG"),
             "text.png": (b"Image Index,Finding Labels\n", "not a decodable image"),
             # zeroed middle: its chunk lengths no longer add up, refused before decoding
             "corrupt.png": (data[:100] + bytes(len(data) - 200) + data[-100:], "damaged PNG \\(chunk")}
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageError, match=reason) as error:
            read_image(tmp_path / name)
        assert error.value.file == str(tmp_path / name) and str(tmp_path / name) in str(error.value)
        assert film_to_png(tmp_path / name, 32)[0] is None
    with pytest.raises(ImageError, match="cannot read"):
        read_image(tmp_path / "missing.png")


def test_pixel_count_guard():
    with pytest.raises(ImageError, match="decompression-bomb"):
        read_image(FILMS[0], max_pixels=1000)
    bomb = bytearray(encode_png(np.zeros((4, 4), np.uint8)))
    bomb[16:24] = (100_000).to_bytes(4, "big") * 2  # header claims 100000 x 100000
    with pytest.raises(ImageError, match="10,000,000,000 pixels"):
        read_image(bytes(bomb))
