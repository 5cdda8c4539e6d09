"""Bad inputs outside the films: label tables (gzip, BOM, encoding, empty), and the
acceptance rule the builder shares with predict. Each names the file and the fix."""

import gzip
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr_tf.data import nih
from cxr_tf.data.images import FilmLimits, film_problem, film_to_png
from cxr_tf.inference.readers import FilmError, read_film

SAMPLE = Path(__file__).resolve().parents[1] / "cxr_tf" / "sample"
TABLE = SAMPLE / "Data_Entry_sample.csv"


@pytest.fixture(scope="module")
def table():
    return nih.read_label_table(TABLE)


def test_gzip_recognised_by_content_and_bom_dropped(table, tmp_path):
    plain_named_gz = tmp_path / "Data_Entry_2017.csv.gz"
    plain_named_gz.write_bytes(TABLE.read_bytes())
    assert nih.read_label_table(plain_named_gz).equals(table)
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbf" + TABLE.read_bytes())  # Excel's "CSV UTF-8" byte-order mark
    assert nih.read_label_table(excel).equals(table)


@pytest.mark.parametrize("name, content, message", [
    ("cut.csv.gz", lambda: gzip.compress(TABLE.read_bytes())[:-40], "damaged gzip file .*download the table again"),
    ("latin1.csv", lambda: TABLE.read_bytes().replace(b"Cardiomegaly", "Cardiomégaly".encode("latin-1"), 1),
     "line [0-9]+ is not UTF-8 text .*save the table as UTF-8"),
    ("header.csv", lambda: TABLE.read_bytes().split(b"\n")[0] + b"\n", "has a header but no rows"),
    ("empty.csv", lambda: b"", "empty file"),
])
def test_bad_tables_name_the_file_and_the_fix(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content())
    with pytest.raises(nih.TableError, match=f"{path}: {message}"):
        nih.read_label_table(path)


def test_latin1_error_names_the_right_line(tmp_path):
    lines = TABLE.read_bytes().split(b"\n")
    lines[7] = lines[7].replace(b"|", "|\xe9".encode("latin-1"), 1) if b"|" in lines[7] else lines[7] + b"\xe9"
    path = tmp_path / "t.csv"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(nih.TableError, match="line 8 is not UTF-8"):
        nih.read_label_table(path)


@pytest.mark.parametrize("shape, reason", [((40000, 64), "a side above 12000 px"), ((4000, 64), "aspect ratio"), ((1, 1), "too small"),
                                           ((32, 32), "too small")])
def test_builder_skips_what_predict_refuses(tmp_path, shape, reason):
    """One rule (FilmLimits): the builder's worker task and predict refuse the same films."""
    path = tmp_path / "odd.png"
    cv2.imwrite(str(path), np.full(shape, 100, np.uint8))
    png, why = film_to_png(path, 64)
    assert png is None and reason in why
    with pytest.raises(FilmError, match=reason):
        read_film(path)
    assert film_to_png(SAMPLE / "images" / "00000075_000.png", 64)[0] is not None


def test_bit_depth_is_part_of_the_rule():
    assert film_problem(512, 512, bits=32).startswith("32 bits per pixel")
    assert film_problem(512, 512, bits=12) is None
    assert film_problem(512, 512, FilmLimits(max_bits=8), bits=12) is not None
