"""Readers that cannot crash: byte-mutated DICOM headers, compressed DICOM frames (JPEG-LS,
JPEG 2000, RLE) and PNGs, seeded, must give a Film or a FilmError naming the file, never any
other exception; and DICOM numeric elements written as text are read when they are numbers,
refused clearly otherwise. The films are read in this process (``decode_seconds=None``): what
is fuzzed is the parsing and decoding, which the guard process runs unchanged
(``test_reader_budgets.py`` tests the guard; ``tools/fuzz_readers.py`` fuzzes through it)."""

from pathlib import Path

import numpy as np
import pydicom
import pytest

from bombs import encapsulated_dicom, mutate
from conftest import twelve_bit_dicom as dicom_bytes
from conftest import twelve_bit_film
from cxr_tf.inference.readers import Film, FilmError, Limits, read_film

SAMPLE_FILMS = sorted((Path(__file__).resolve().parents[2] / "cxr_tf" / "sample" / "images").glob("*.png"))
FUZZ_DICOM = 2500
FUZZ_PNG = 1500
FUZZ_COMPRESSED = 300
IN_PROCESS = Limits(decode_seconds=None)


def fuzz(seed_data, count, seed, start, stop, name):
    """Read ``count`` mutations of ``seed_data``; returns (films read, FilmErrors, uncaught [(i, repr)])."""
    rng = np.random.default_rng(seed)
    films = errors = 0
    uncaught = []
    for i in range(count):
        data = mutate(seed_data, rng, start, stop)
        try:
            film = read_film(data, name=f"{name}-{i}", limits=IN_PROCESS)
        except FilmError as err:
            assert f"{name}-{i}" in str(err)
            errors += 1
        except Exception as err:  # noqa: BLE001 - what the test is here to count
            uncaught.append((i, f"{type(err).__name__}: {err}"[:200]))
        else:
            assert isinstance(film, Film) and film.pixels.dtype == np.uint8 and film.pixels.ndim == 2
            films += 1
    return films, errors, uncaught


@pytest.mark.filterwarnings("ignore")  # pydicom warns about every damaged element it can still read
def test_fuzzed_dicom_headers_never_escape_as_other_exceptions():
    seed_data = dicom_bytes(WindowCenter=2048, WindowWidth=4096, RescaleSlope=1, RescaleIntercept=0)
    pixel_start = seed_data.rindex(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data: mutate everything before
    films, errors, uncaught = fuzz(seed_data, FUZZ_DICOM, 15, 128, pixel_start + 12, "fuzz.dcm")
    assert not uncaught, f"{len(uncaught)} of {FUZZ_DICOM} escaped: {uncaught[:5]}"
    assert films > 0 and errors > 0  # the mutations both break files and leave some readable


@pytest.mark.filterwarnings("ignore")
def test_fuzzed_pngs_never_escape_as_other_exceptions():
    seed_data = SAMPLE_FILMS[0].read_bytes()
    _, errors, uncaught = fuzz(seed_data, FUZZ_PNG, 16, 0, len(seed_data), "fuzz.png")
    assert not uncaught, f"{len(uncaught)} of {FUZZ_PNG} escaped: {uncaught[:5]}"
    assert errors > 0


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("syntax", [pydicom.uid.JPEGLSLossless, pydicom.uid.JPEG2000Lossless, pydicom.uid.RLELossless],
                         ids=["jpeg-ls", "jpeg2000", "rle"])
def test_fuzzed_compressed_frames_never_escape_as_other_exceptions(syntax):
    if syntax == pydicom.uid.JPEGLSLossless and not pydicom.pixels.get_encoder(syntax).is_available:
        pytest.skip("pyjpegls is not installed: no JPEG-LS film to fuzz")
    seed_data = encapsulated_dicom(twelve_bit_film(96, 128), syntax)
    frame_start = seed_data.rindex(b"\xe0\x7f\x10\x00")  # mutate the pixel data: offsets, codestream header, data
    films, errors, uncaught = fuzz(seed_data, FUZZ_COMPRESSED, 28, frame_start, frame_start + 120, "fuzz.dcm")
    assert not uncaught, f"{len(uncaught)} of {FUZZ_COMPRESSED} escaped: {uncaught[:5]}"
    assert errors > 0


def test_dicom_numbers_written_as_text_are_read():
    numeric = read_film(dicom_bytes(RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=1000))
    text = read_film(dicom_bytes(text={"RescaleSlope": "2", "RescaleIntercept": "-1000 ",
                                       "WindowCenter": "1000\\1200", "WindowWidth": " 1000.0\\800"}))
    np.testing.assert_array_equal(text.pixels, numeric.pixels)
    assert numeric.pixels.std() > 10  # a real picture, not a constant


@pytest.mark.parametrize("keyword", ["WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"])
def test_dicom_text_that_is_not_a_number_is_refused_naming_the_element(keyword):
    tags = {"WindowCenter": "1000", "WindowWidth": "1000", keyword: "soft tissue"}
    with pytest.raises(FilmError, match=f"odd.dcm: DICOM {keyword} is 'soft tissue', not a number"):
        read_film(dicom_bytes(text=tags), name="odd.dcm")
