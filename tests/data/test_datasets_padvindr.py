"""The PadChest and VinDr-CXR adapters on fixtures written in each release's exact format
(tests/releases.py) from real NIH films: the records hold what the tables say (labels,
patients, views, ages, the official split, radiologist aggregation), films and rows left
out are listed, a folder of another release is recognised, and bad tables are refused
naming the file, line and column. Also: DICOM films decode in the builder's worker code."""

import gzip
from pathlib import Path

import cv2
import numpy as np
import pytest
import releases
import tensorflow as tf

from cxr_tf.data import harmonise
from cxr_tf.data.builder import build_records
from cxr_tf.data.datasets import padchest, vindr_cxr
from cxr_tf.data.datasets.nih import SAMPLE_DIR
from cxr_tf.data.datasets.base import TableError
from cxr_tf.data.images import film_to_png

# The builder warns about val/test splits without positives for some finding (their AUC cannot be
# measured); on fixtures of a few dozen films that is expected, and the manifest's "warnings" hold it.
pytestmark = pytest.mark.filterwarnings("ignore:split .* its AUC cannot be measured there:UserWarning")

SIZE = 32


def build(release, out, dataset, **options):
    return build_records(data_dir=release, out=out, dataset=dataset, image_size=SIZE, workers=1, progress=False,
                         log=lambda *_: None, **options)


def expected_labels(film, dataset, labels):
    """The labels a fixture film must carry (its NIH labels through the harmonised table)."""
    truth = releases.nih_truth(film, dataset) if dataset == "padchest" else releases.vindr_truth(film)
    return np.array([truth[label] for label in labels])


@pytest.fixture(scope="module")
def padchest_release(tmp_path_factory):
    return releases.write_padchest_release(tmp_path_factory.mktemp("padchest"))


@pytest.fixture(scope="module")
def vindr_release(tmp_path_factory):
    return releases.write_vindr_release(tmp_path_factory.mktemp("vindr"))


def test_padchest_records_hold_what_the_table_says(padchest_release, tmp_path):
    records = build(padchest_release, tmp_path / "records", "padchest")
    labels = records.labels
    assert tuple(labels) == harmonise.release_labels("padchest")
    films = releases.nih_films(48)
    left_out = {*releases.PADCHEST_MISSING, *releases.PADCHEST_NO_LABELS, 7, 8, 9, 10}
    expected = {releases.padchest_image_id(k): k for k in range(48) if k not in left_out}
    examples = releases.read_records(tmp_path / "records", len(labels))
    assert set(examples) == set(expected)
    for name, example in examples.items():
        k = expected[name]
        np.testing.assert_array_equal(example["labels"], expected_labels(films.iloc[k], "padchest", labels), name)
    # absent from the list = negative: every label known
    assert all((e["labels"] >= 0).all() for e in examples.values())
    one = examples[releases.padchest_image_id(1)]  # 'loculated pleural effusion' counts as pleural effusion
    assert one["labels"][labels.index("pleural effusion")] == films["Effusion"][1]
    views = {k: examples[releases.padchest_image_id(k)]["view"].decode() for k in (0, 3, 4, 11)}
    assert views == {0: "PA", 3: "AP", 4: "AP", 11: ""}
    assert examples[releases.padchest_image_id(5)]["age"] == -1  # no birth year
    assert examples[releases.padchest_image_id(0)]["age"] == films["age"][0]  # study year - birth year
    assert examples[releases.padchest_image_id(6)]["sex"] == b""
    for a, b in ((0, 1), (2, 3), (4, 5)):  # two films per patient, kept in one split
        first, second = examples[releases.padchest_image_id(a)], examples[releases.padchest_image_id(b)]
        assert first["patient_id"] == second["patient_id"] and first["split"] == second["split"]
    assert examples[releases.padchest_image_id(1)]["follow_up"] == 1  # the patient's second study date
    excluded = records.excluded
    assert excluded["lateral view (pass --laterals to keep)"]["count"] == 3
    assert excluded[padchest.NOT_CHEST["COSTAL"]]["count"] == 1
    assert excluded[padchest.NO_LABELS]["count"] == 2
    assert records.rows_without_files["count"] == 3
    assert [s["reason"] for s in records.skipped] == ["no row in the label table"]


def test_padchest_laterals_and_no_official_split(padchest_release, tmp_path):
    release = padchest.read(padchest_release, laterals=True)
    lateral = release.table.set_index("image_index").loc[[releases.padchest_image_id(k) for k in (7, 8, 9)], "view"]
    assert (lateral == "LATERAL").all()
    assert padchest.NOT_CHEST["COSTAL"] in release.excluded  # rib views stay out
    with pytest.raises(ValueError, match="PadChest release has no official split.*--split stratified"):
        build(padchest_release, tmp_path / "official", "padchest", split="official")


def _rewrite_padchest(release, tmp_path, edit):
    table = release / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
    lines = gzip.decompress(table.read_bytes()).decode().splitlines()
    copy = tmp_path / table.name
    copy.write_bytes(gzip.compress(("\n".join(edit(lines)) + "\n").encode()))
    return copy


def test_padchest_bad_tables_name_file_line_and_column(padchest_release, tmp_path):
    no_labels = _rewrite_padchest(padchest_release, tmp_path, lambda lines: [
        ",".join(c for c in lines[0].split(",") if c != "Labels")] + lines[1:])
    with pytest.raises(TableError, match=r"\.csv\.gz: line 1 \(header\) lacks the required column\(s\) \['Labels'\]"):
        padchest.read(padchest_release, labels=no_labels)

    def break_row(lines):
        lines[4] = lines[4].replace("['", "[", 1)  # the list of line 5 no longer parses
        return lines

    bad = _rewrite_padchest(padchest_release, tmp_path, break_row)
    with pytest.raises(TableError, match=r"line 5: column 'Labels': not a list of findings"):
        padchest.read(padchest_release, labels=bad)
    odd = _rewrite_padchest(padchest_release, tmp_path, lambda lines: [
        line.replace(",PA,No,", ",OBLIQUE,No,", 1) if i == 2 else line for i, line in enumerate(lines)])
    with pytest.raises(TableError, match=r"line 3: column 'Projection': unknown projection 'OBLIQUE'"):
        padchest.read(padchest_release, labels=odd)


def test_vindr_records_official_split_majority_and_dicom(vindr_release, tmp_path):
    records = build(vindr_release, tmp_path / "records", "vindr-cxr", split="official")
    labels = records.labels
    assert records.options == {"aggregate": "majority"}
    films = releases.nih_films(48)
    examples = releases.read_records(tmp_path / "records", len(labels))
    undecodable = releases.vindr_image_id(3)
    expected = {releases.vindr_image_id(k): k for k in range(48) if k not in (*releases.VINDR_MISSING, 3)}
    assert set(examples) == set(expected)
    skipped = {Path(s["file"]).stem: s["reason"] for s in records.skipped}
    assert "transfer syntax JPEG Lossless" in skipped[undecodable]
    assert skipped[releases.vindr_image_id(9999)] == "no row in the label table"
    assert records.rows_without_files["count"] == 2
    for name, example in examples.items():
        k = expected[name]
        # the majority of three readers is the truth whatever the one disagreeing reader marks
        np.testing.assert_array_equal(example["labels"], expected_labels(films.iloc[k], "vindr-cxr", labels), name)
        assert (example["split"] == "test") == (k >= releases.VINDR_TEST_FROM)
        assert example["view"] == b"PA"
        assert example["age"] == (-1 if k == 2 else films["age"][k])
        assert example["sex"].decode() == ("" if k == 2 else films["sex"][k])
        # the decoded film is the NIH film (MONOCHROME1 inverted back, 12 bits windowed to 8)
        source = cv2.resize(cv2.imread(str(SAMPLE_DIR / "images" / films["image_index"][k]), 0), (SIZE, SIZE),
                            interpolation=cv2.INTER_AREA)
        decoded = tf.io.decode_png(example["image"]).numpy()[..., 0]
        assert np.corrcoef(source.ravel(), decoded.ravel())[0, 1] > 0.98, name
    patients = {e["patient_id"] for e in examples.values()}
    assert len(patients) == len(examples)  # one patient per film: the release does not say more
    assert {s: records.splits[s].count > 0 for s in ("train", "val", "test")} == dict.fromkeys(
        ("train", "val", "test"), True)


def test_vindr_any_reader_aggregation(vindr_release):
    majority = vindr_cxr.read(vindr_release).table.set_index("image_index")
    anyone = vindr_cxr.read(vindr_release, aggregate="any").table.set_index("image_index")
    films = releases.nih_films(releases.VINDR_TEST_FROM)
    changed = 0
    for k, film in films.iterrows():
        if k in releases.VINDR_MISSING:
            continue
        name = releases.vindr_image_id(k)
        truth = releases.vindr_truth(film)
        _, flipped = releases.vindr_flip(k)
        for label in harmonise.release_labels("vindr-cxr"):
            assert majority.at[name, label] == truth[label]
            assert anyone.at[name, label] == (1 if label == flipped else truth[label])
        changed += truth[flipped] == 0
    assert changed > 20  # the fixture exercises the difference
    with pytest.raises(ValueError, match="aggregate='all'"):
        vindr_cxr.read(vindr_release, aggregate="all")


def test_vindr_bad_tables_name_file_line_and_column(vindr_release, tmp_path):
    copy = tmp_path / "annotations"
    copy.mkdir()
    lines = (vindr_release / "annotations" / "image_labels_train.csv").read_text().splitlines()
    fields = lines[3].split(",")
    fields[3] = "2"  # column 4: Atelectasis
    (copy / "image_labels_train.csv").write_text("\n".join([*lines[:3], ",".join(fields), *lines[4:]]) + "\n")
    with pytest.raises(TableError, match=r"image_labels_train\.csv: line 4: column 'Atelectasis': label value '2'"):
        vindr_cxr.read(vindr_release, labels=copy / "image_labels_train.csv")
    header = lines[0].replace(",rad_id", "")
    (copy / "image_labels_train.csv").write_text("\n".join([header, *lines[1:]]) + "\n")
    with pytest.raises(TableError, match=r"line 1 \(header\) lacks the required column\(s\) \['rad_id'\]"):
        vindr_cxr.read(vindr_release, labels=copy / "image_labels_train.csv")
    (copy / "image_labels_train.csv").write_text("\n".join(lines) + "\n")
    test = (vindr_release / "annotations" / "image_labels_test.csv").read_text().splitlines()
    (copy / "image_labels_test.csv").write_text("\n".join([*test, test[1]]) + "\n")
    with pytest.raises(TableError, match=r"test image '\w+' appears on lines \[2, 14\]"):
        vindr_cxr.read(vindr_release, labels=copy / "image_labels_train.csv")


def test_wrong_dataset_names_the_right_one(padchest_release, vindr_release, tmp_path):
    with pytest.raises(ValueError, match="not the PadChest release.*NIH label table.*--dataset nih"):
        build(SAMPLE_DIR, tmp_path / "a", "padchest")
    with pytest.raises(ValueError, match="not the NIH ChestX-ray14 release.*--dataset padchest"):
        build(padchest_release, tmp_path / "b", "nih")
    with pytest.raises(ValueError, match="not the PadChest release.*--dataset vindr-cxr"):
        build(vindr_release, tmp_path / "c", "padchest")
    with pytest.raises(ValueError, match="not the VinDr-CXR release.*--dataset padchest"):
        build(padchest_release, tmp_path / "d", "vindr-cxr")


def test_film_to_png_decodes_dicom_and_reports_what_it_cannot(vindr_release):
    png, reason = film_to_png(vindr_release / "train" / f"{releases.vindr_image_id(4)}.dicom", SIZE)
    assert reason is None and tf.io.decode_png(png).shape == (SIZE, SIZE, 1)
    png, reason = film_to_png(vindr_release / "train" / f"{releases.vindr_image_id(3)}.dicom", SIZE)
    assert png is None and reason.startswith("cannot decode DICOM pixel data (transfer syntax JPEG Lossless")
