"""cxr_tf.data.datasets.nih on the real NIH tables and films shipped in tests/fixtures (see tests/fixtures/README.md)."""

import gzip
import os
import shutil

import numpy as np
import pytest

from conftest import TEST_DATA
from cxr_tf.data.datasets import nih
from cxr_tf.data.datasets.nih import SAMPLE_DIR
from cxr_tf.data.labels import LABELS

SAMPLE = TEST_DATA / "nih-sample"
FULL = TEST_DATA / "nih"


@pytest.fixture(scope="module")
def sample_table():
    return nih.read_label_table(SAMPLE / "Data_Entry_sample.csv")


def test_both_layouts_and_gzip_read_identically(sample_table, tmp_path):
    old = nih.read_label_table(SAMPLE / "Data_Entry_sample_2017_layout.csv")  # trailing comma, ages 058Y
    gz = tmp_path / "Data_Entry_2017.csv.gz"
    with open(SAMPLE / "Data_Entry_sample_2017_layout.csv", "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert len(sample_table) == 150
    assert sample_table.equals(old)
    assert sample_table.equals(nih.read_label_table(gz))
    assert sample_table["age"].dtype == np.int64 and sample_table["age"].between(1, 100).all()
    row = sample_table.set_index("image_index").loc["00000100_000.png"]  # Atelectasis|Effusion|Infiltration
    assert [label for label in LABELS if row[label]] == ["Atelectasis", "Effusion", "Infiltration"]
    matrix = nih.label_matrix(sample_table)
    assert matrix.shape == (150, 14) and (matrix.sum(axis=0) >= 6).all()
    no_finding = sample_table["finding_labels"] == "No Finding"
    assert no_finding.sum() == 22 and not matrix[no_finding.to_numpy()].any()


def test_full_table():
    table = nih.read_label_table(FULL / "Data_Entry_2017_v2020.csv.gz")
    assert len(table) == 112_120 and table["patient_id"].nunique() == 30_805
    assert table["Hernia"].sum() == 227
    assert table["image_index"].iloc[1] == "00000001_001.png"
    assert nih.label_matrix(table)[1].tolist() == [int(label in ("Cardiomegaly", "Emphysema")) for label in LABELS]


def _edited_table(tmp_path, edit):
    lines = (SAMPLE / "Data_Entry_sample.csv").read_text().splitlines()
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text("\n".join(edit(lines)) + "\n")
    return path


@pytest.mark.parametrize("edit, expected", [
    (lambda ls: ls[:2] + [ls[2].replace("Atelectasis|", "Atelectasys|")] + ls[3:], r"line 3: unknown finding 'Atelectasys'"),
    (lambda ls: ls + [ls[5]], r"'00000211_000.png'|appears on several lines \[6, 152\]"),
    (lambda ls: [l.replace(",Patient ID", ",Patient") for l in ls[:1]] + ls[1:], r"lacks the required column\(s\) \['Patient ID'\]"),
    (lambda ls: ls[:4] + [ls[4].replace(",284,", ",P284,")] + ls[5:], r"line 5: non-numeric 'P284' in column 'Patient ID'"),
    (lambda ls: ls[:3] + [ls[3].replace(",F,", ",Female,").replace(",M,", ",Male,")] + ls[4:], r"line 4: value .*'(Female|Male)'"),
])
def test_table_errors_name_line_and_value(tmp_path, edit, expected):
    with pytest.raises(nih.TableError, match=expected):
        nih.read_label_table(_edited_table(tmp_path, edit))


def test_kaggle_layout_finds_every_film(sample_table):
    inventory = nih.match_files(sample_table, SAMPLE)  # images_001/images/*.png: 7 of the 150 at full size
    found = sorted(p.name for p in (SAMPLE / "images_001" / "images").glob("*.png"))
    assert sorted(inventory.table["image_index"]) == found and len(found) == 7
    assert len(inventory.rows_without_files) == 143 and inventory.files_without_rows == []
    assert all(p.parent.name == "images" and p.parent.parent.name == "images_001" for p in inventory.table["path"])


def test_box_layout_rows_without_files_and_files_without_rows(sample_table, tmp_path):
    (tmp_path / "images").mkdir()
    names = sample_table["image_index"].tolist()
    for name in names[:20]:  # the embedded sample's 128 px films, in the NIH box layout
        os.symlink(SAMPLE_DIR / "images" / name, tmp_path / "images" / name)
    os.symlink(SAMPLE_DIR / "images" / names[0], tmp_path / "images" / "99999999_000.png")
    inventory = nih.match_files(sample_table.iloc[:25], tmp_path)
    assert inventory.table["image_index"].tolist() == names[:20]
    assert inventory.rows_without_files == names[20:25]
    assert inventory.files_without_rows == [str(tmp_path / "images" / "99999999_000.png")]


def test_find_label_table(tmp_path):
    assert nih.find_label_table(TEST_DATA).name == "Data_Entry_2017_v2020.csv.gz"
    with pytest.raises(FileNotFoundError, match="--labels"):
        nih.find_label_table(tmp_path)


def test_bbox_table():
    boxes = nih.read_bbox_table(FULL / "BBox_List_2017.csv.gz")
    assert len(boxes) == 984 and boxes["image_index"].nunique() == 880
    assert set(boxes["label"]) <= set(LABELS) and "Infiltration" in set(boxes["label"])
    assert boxes["x"].between(0, 1024).all() and (boxes["w"] > 0).all()
    first = boxes.iloc[0]
    assert (first["image_index"], first["label"]) == ("00013118_008.png", "Atelectasis")
    assert first["x"] == pytest.approx(225.0847457627)


def test_2017_age_units(tmp_path):
    lines = (SAMPLE / "Data_Entry_sample_2017_layout.csv").read_text().splitlines()[:4]
    lines[2] = lines[2].replace(",060Y,", ",018M,")
    lines[3] = lines[3].replace(",055Y,", ",400D,")
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text("\n".join(lines) + "\n")
    assert nih.read_label_table(path)["age"].tolist() == [61, 1, 1]
