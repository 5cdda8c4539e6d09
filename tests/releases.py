"""Small dataset releases written in their exact published formats (file names, folders, headers,
label encodings, gzip where the release gzips), generated at test time from the 150 real NIH
sample films (``cxr_tf/sample``). Each film's labels come from its NIH labels through
``cxr_tf/resources/findings.csv`` (NIH finding -> common name -> the release's label), so a model
trained on NIH records can be validated on these releases meaningfully; a release label with no
NIH counterpart is "not mentioned".

Each ``write_<dataset>_release(root, ...)`` writes under ``root`` and returns the release folder;
``RELEASES`` names the writer of every dataset of the registry (``cxr_tf.data.datasets.DATASETS``).
"""

import csv
import gzip
import hashlib
import io
import itertools
from datetime import date, timedelta
from pathlib import Path

import cv2
import numpy as np

from cxr_tf.data import harmonise
from cxr_tf.data.datasets.nih import SAMPLE_DIR, SAMPLE_LABELS
from cxr_tf.data.datasets import nih
from cxr_tf.data.labels import LABELS as NIH_LABELS, NUM_LABELS


def nih_films(count, start=0):
    """Rows ``start`` .. ``start + count`` of the NIH sample's label table (read with the NIH
    reader), in table order, each with ``film``: the 128 px 8-bit greyscale image."""
    table = nih.read_label_table(SAMPLE_LABELS).iloc[start:start + count].reset_index(drop=True)
    if len(table) < count:
        raise ValueError(f"the NIH sample has {len(table) + start} films; asked for {count} from {start}")
    table["film"] = [cv2.imread(str(SAMPLE_DIR / "images" / name), cv2.IMREAD_GRAYSCALE) for name in table["image_index"]]
    return table


def nih_labels(row, dataset):
    """{release label of ``dataset``: 1.0 / 0.0 from the NIH film ``row``, or None where the
    release label has no NIH counterpart}, through the harmonised findings table."""
    _, mappings = harmonise.table()
    nih_name = {common: own for own, common in mappings["nih"].items()}
    return {own: (float(row[nih_name[common]]) if common in nih_name else None)
            for own, common in mappings[dataset].items()}


def _write_jpeg(path, film):
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), film, [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"cannot write {path}")


def _patients(count, sizes=(1, 2, 1, 3)):
    """Film indices 0..count-1 grouped into patients of cycling sizes (a few with several films)."""
    groups, films = [], iter(range(count))
    for size in itertools.cycle(sizes):
        group = list(itertools.islice(films, size))
        if not group:
            return groups
        groups.append(group)


# --------------------------------------------------------------------------- NIH ChestX-ray14
def write_nih_release(root, count=48):
    """NIH ChestX-ray14 as published (Kaggle layout): ``<root>/nih/Data_Entry_2017_v2020.csv``
    (the sample table's first ``count`` rows, its real lines unchanged), the films
    ``images_001/images/<Image Index>`` (the sample's 128 px copies) and the official lists
    ``train_val_list.txt`` / ``test_list.txt`` cut to those films."""
    release = Path(root) / "nih"
    (release / "images_001" / "images").mkdir(parents=True, exist_ok=True)
    lines = SAMPLE_LABELS.read_text(encoding="utf-8").splitlines()
    if len(lines) - 1 < count:
        raise ValueError(f"the NIH sample has {len(lines) - 1} films; asked for {count}")
    kept = lines[1:count + 1]
    (release / "Data_Entry_2017_v2020.csv").write_text("\n".join([lines[0], *kept]) + "\n", encoding="utf-8")
    names = [line.split(",", 1)[0] for line in kept]
    for name in names:
        (release / "images_001" / "images" / name).write_bytes((SAMPLE_DIR / "images" / name).read_bytes())
    for listed in ("train_val_list.txt", "test_list.txt"):
        wanted = [name for name in (SAMPLE_DIR / listed).read_text().split() if name in names]
        (release / listed).write_text("\n".join(wanted) + "\n")
    return release


# --------------------------------------------------------------------------- CheXpert
CHEXPERT_OBSERVATIONS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                         "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                         "Pleural Other", "Fracture", "Support Devices")
"""The 14 observations in the column order of CheXpert's train.csv / valid.csv."""


def _observations(row, dataset, rng, vague):
    """The 14 observation cells of a film as CheXpert writes them ("1.0", "0.0", "-1.0", ""):
    NIH positives positive, NIH negatives negative, labels without NIH counterpart not mentioned;
    with ``vague`` (the labeler's reports) some positives uncertain and some negatives not mentioned."""
    mapped = nih_labels(row, dataset)
    cells = {"No Finding": "1.0" if not any(row[label] for label in NIH_LABELS) else ""}
    for label in CHEXPERT_OBSERVATIONS[1:]:
        value = mapped.get(label)
        if value is None:
            cells[label] = ""
        elif value == 1.0:
            cells[label] = "-1.0" if vague and rng.random() < 0.3 else "1.0"
        else:
            cells[label] = "" if vague and rng.random() < 0.5 else "0.0"
    return cells


def write_chexpert_release(root, films=44, valid_patients=3, seed=0, name="CheXpert-v1.0-small"):
    """CheXpert-v1.0-small as published: ``<root>/<name>/{train,valid}.csv`` and the JPEG films
    ``{train,valid}/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg``; Path relative to ``root``.

    ``films`` NIH films, each one study's frontal film (AP/PA from NIH), grouped into patients of
    1-3 studies; the last ``valid_patients`` patients are valid.csv's (numbered from 64541, as
    the release does, labels 1.0/0.0 only). Three train studies also have a lateral film (the
    frontal mirrored); two train films are listed but not written (rows without files); one
    film is written without a row; one film's Sex is Unknown.
    """
    rng = np.random.default_rng(seed)
    release = Path(root) / name
    sample = nih_films(films + 1)
    groups = _patients(films)
    train_groups, valid_groups = groups[:-valid_patients], groups[-valid_patients:]
    lines = {"train.csv": [], "valid.csv": []}
    study_count = 0
    for split, numbered in (("train", enumerate(train_groups, start=1)), ("valid", enumerate(valid_groups, 64541))):
        for number, group in numbered:
            for study, index in enumerate(group, start=1):
                row = sample.iloc[index]
                cells = _observations(row, "chexpert", rng, vague=split == "train")
                sex = "Unknown" if index == 3 else {"M": "Male", "F": "Female"}[row["sex"]]
                folder = f"{split}/patient{number:05d}/study{study}"
                views = [("view1_frontal.jpg", "Frontal", row["view"], row["film"])]
                if split == "train" and study_count in (1, 4, 9):
                    views.append(("view2_lateral.jpg", "Lateral", "", cv2.flip(row["film"], 1)))
                study_count += 1
                for file_name, frontal, projection, film in views:
                    lines[f"{split}.csv"].append(",".join([f"{name}/{folder}/{file_name}", sex, str(row["age"]), frontal,
                                                           projection] + [cells[o] for o in CHEXPERT_OBSERVATIONS]))
                    if not (split == "train" and index in (5, 12) and frontal == "Frontal"):
                        _write_jpeg(release / folder / file_name, film)
    _write_jpeg(release / "train" / "patient09999" / "study1" / "view1_frontal.jpg", sample.iloc[films]["film"])
    header = ",".join(["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS])
    for table, rows in lines.items():
        (release / table).write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return release



# --------------------------------------------------------------------------- MIMIC-CXR-JPG
MIMIC_METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                          "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                          "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning")
_VIEW_CODES = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral",
               "AP AXIAL": "antero-posterior", "": ""}


def _dicom_id(*parts):
    digest = hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()
    return "-".join(digest[i:i + 8] for i in range(0, 40, 8))


def _gzip(path, lines):
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))


def write_mimic_release(root, films=44, seed=0):
    """MIMIC-CXR-JPG 2.0.0 as published: ``<root>/mimic-cxr-jpg/2.0.0/`` with
    ``mimic-cxr-2.0.0-{chexpert,negbio,metadata,split}.csv.gz`` and the JPEG films
    ``files/pXX/pSUBJECT/sSTUDY/DICOM.jpg``.

    ``films`` NIH films, each a study with one frontal film (ViewPosition from NIH), grouped into
    patients of 1-3 studies whose dates increase while their study ids are random (so the
    follow-up order is the dates'); three studies also have a LATERAL film, one an LL and one an
    AP AXIAL film (mirrored copies); one frontal film has a blank ViewPosition; one study has no
    label row (in either labeler's table); two films are listed but not written; one film is
    written without a metadata row; split by patient (the last 3 test, the 2 before validate).
    The NegBio table differs from the CheXpert one in which labels are uncertain or not mentioned.
    """
    rng = np.random.default_rng(seed)
    release = Path(root) / "mimic-cxr-jpg" / "2.0.0"
    sample = nih_films(films + 1)
    groups = _patients(films)
    study_ids = rng.choice(np.arange(50_000_000, 60_000_000), films, replace=False)
    labelers = {"chexpert": np.random.default_rng(seed + 1), "negbio": np.random.default_rng(seed + 2)}
    observations = sorted(CHEXPERT_OBSERVATIONS)  # MIMIC-CXR-JPG's label columns are alphabetical
    metadata, splits, label_rows = [], [], {name: [] for name in labelers}
    for number, group in enumerate(groups):
        subject = 10_000_000 + number % 10 * 1_000_000 + 1000 + 37 * number
        split = "test" if number >= len(groups) - 3 else "validate" if number >= len(groups) - 5 else "train"
        day = date(2150, 1, 1) + timedelta(days=int(rng.integers(0, 3000)))
        for index in group:
            row, study = sample.iloc[index], int(study_ids[index])
            day += timedelta(days=int(rng.integers(0, 200)))  # the same day now and then: the time decides
            when = f"{int(rng.integers(0, 24)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}.{int(rng.integers(0, 1000)):03d}"
            views = [("" if index == 7 else row["view"], row["film"])]
            views += [(position, cv2.flip(row["film"], 1)) for position, at in (("LATERAL", (2, 9, 20)), ("LL", (15,)),
                                                                                 ("AP AXIAL", (11,))) if index in at]
            procedure = "CHEST (PORTABLE AP)" if row["view"] == "AP" else "CHEST (PA AND LAT)"
            for position, film in views:
                dicom = _dicom_id(subject, study, position)
                metadata.append(",".join(map(str, [dicom, subject, study, procedure, position, film.shape[0],
                                                   film.shape[1], day.strftime("%Y%m%d"), when, procedure,
                                                   _VIEW_CODES[position], "Erect" if row["view"] == "PA" else "Recumbent"])))
                splits.append(f"{dicom},{study},{subject},{split}")
                if not (index in (5, 12) and position == row["view"]):
                    _write_jpeg(release / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg",
                                film)
            if index != 17:  # its study has no label row
                for name, labeler in labelers.items():
                    cells = _observations(row, "mimic-cxr", labeler, vague=True)
                    label_rows[name].append(",".join([str(subject), str(study)] + [cells[o] for o in observations]))
    _write_jpeg(release / "files" / "p19" / "p19999999" / "s59999999" / f"{_dicom_id('stray')}.jpg",
                sample.iloc[films]["film"])
    for name, rows in label_rows.items():
        _gzip(release / f"mimic-cxr-2.0.0-{name}.csv.gz", [",".join(["subject_id", "study_id", *observations]), *rows])
    _gzip(release / "mimic-cxr-2.0.0-metadata.csv.gz", [",".join(MIMIC_METADATA_COLUMNS), *metadata])
    _gzip(release / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id,study_id,subject_id,split", *splits])
    return release


def nih_truth(row, dataset):
    """{release label: 0/1} of one NIH sample row for ``dataset``'s harmonised labels; labels
    without an NIH counterpart are 0."""
    common = harmonise.table()[1]
    nih_of = {name: own for own, name in common["nih"].items()}
    truth = {}
    for own, name in common[dataset].items():
        truth[own] = int(row[nih_of[name]]) if name in nih_of else 0
    return truth


# --------------------------------------------------------------------------- PadChest

PADCHEST_COLUMNS = (
    "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "Pediatric", "MethodProjection", "Modality_DICOM", "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM",
    "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM",
    "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime",
    "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels", "Localizations",
    "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS")
"""The columns of PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv (the release README's list)."""
PADCHEST_PROJECTIONS = {3: "AP", 4: "AP_horizontal", 7: "L", 8: "L", 9: "L", 10: "COSTAL", 11: "UNK"}
"""Fixture film k -> Projection (all others PA): laterals, a rib view, an unknown one."""
PADCHEST_MISSING = (12, 13, 14)  # rows without their film
PADCHEST_NO_LABELS = {15: "", 16: "['']"}  # rows whose Labels name nothing: excluded


def padchest_image_id(k):
    """ImageID of fixture film k, in the release's style (study UID digits _ series-image)."""
    return f"2168401113669640{k:013d}_00-{k % 200:03d}-{(7 * k) % 200:03d}.png"


def padchest_patient(k):
    """PatientID of fixture film k: films 0-5 belong to three patients (two films each)."""
    return f"{(k // 2 if k < 6 else k) * 7919 + 10**17:d}"


def write_padchest_release(root, count=48):
    """A PadChest release under ``root/padchest``: the gzipped label table and ``count`` 16-bit
    PNG films (the NIH sample's 8-bit values scaled to 12 bits) in numbered ImageDir folders."""
    release = Path(root) / "padchest"
    films = nih_films(count)
    rows = []
    for k, film in films.iterrows():
        truth = nih_truth(film, "padchest")
        names = [name for name, value in truth.items() if value] or ["normal"]
        if k == 1 and "pleural effusion" in names:  # the hierarchy: a report names the most specific finding
            names[names.index("pleural effusion")] = "loculated pleural effusion"
        labels = "[" + ", ".join(f"'{(' ' if k == 2 else '') + name}'" for name in names) + "]"
        labels = PADCHEST_NO_LABELS.get(k, labels)
        image_dir = str(k % 3)
        if k not in PADCHEST_MISSING:
            pixels = cv2.imread(str(SAMPLE_DIR / "images" / film["image_index"]), cv2.IMREAD_GRAYSCALE)
            folder = release / image_dir
            folder.mkdir(parents=True, exist_ok=True)
            # in 32 bits first: 255 x 4095 overflows uint16 (which wrote films of wrapped noise until the
            # input gate refused every one of them)
            cv2.imwrite(str(folder / padchest_image_id(k)), (pixels.astype(np.uint32) * 4095 // 255).astype(np.uint16))
        projection = PADCHEST_PROJECTIONS.get(k, "PA")
        birth = "" if k == 5 else f"{2014 - int(film['age'])}.0"
        sex = "" if k == 6 else film["sex"]
        values = {"ImageID": padchest_image_id(k), "ImageDir": image_dir,
                  "StudyDate_DICOM": f"2014{1 + k % 12:02d}{1 + k % 28:02d}",
                  "StudyID": hashlib.md5(f"study{k}".encode()).hexdigest(), "PatientID": padchest_patient(k),
                  "PatientBirth": birth, "PatientSex_DICOM": sex, "ViewPosition_DICOM": projection.split("_")[0],
                  "Projection": projection, "Pediatric": "No", "MethodProjection": "Manual review of DICOM fields",
                  "Modality_DICOM": "CR", "PhotometricInterpretation_DICOM": "MONOCHROME2", "BitsStored_DICOM": "12",
                  "Rows_DICOM": str(pixels.shape[0]), "Columns_DICOM": str(pixels.shape[1]),
                  "MethodLabel": "Physician" if k % 4 == 0 else "RNN_model", "Labels": labels,
                  "Report": "informe de prueba", "Localizations": "[]", "LabelsLocalizationsBySentence": "[]",
                  "labelCUIS": "[]", "LocalizationsCUIS": "[]"}
        rows.append([values.get(column, "") for column in PADCHEST_COLUMNS])
    stray = release / "1" / padchest_image_id(9999)  # a film the table does not list
    cv2.imwrite(str(stray), cv2.imread(str(SAMPLE_DIR / "images" / films["image_index"][0]), cv2.IMREAD_GRAYSCALE))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(PADCHEST_COLUMNS)
    writer.writerows(rows)
    (release / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz").write_bytes(
        gzip.compress(text.getvalue().encode()))
    return release


# --------------------------------------------------------------------------- VinDr-CXR

VINDR_LABELS = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture", "Consolidation",
    "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst",
    "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD", "Lung tumor", "Pneumonia", "Tuberculosis")
"""The 22 local and 4 named global labels of image_labels_*.csv, in the release's column order;
"Other disease(s)" and "No finding" follow them."""
VINDR_MISSING = (5, 6)  # training rows without their film
VINDR_TEST_FROM = 36  # films 36.. are the test set


def vindr_image_id(k):
    """image_id of fixture film k (32 hex digits, as the release's)."""
    return hashlib.md5(f"vindr{k}".encode()).hexdigest()


def vindr_truth(film):
    """{VinDr label: 0/1} of one NIH sample row: the harmonised labels, and Nodule/Mass from
    NIH's Mass or Nodule (the table maps Nodule/Mass to Lung Lesion, which NIH lacks)."""
    truth = dict.fromkeys(VINDR_LABELS, 0)
    truth.update(nih_truth(film, "vindr-cxr"))
    truth["Nodule/Mass"] = int(film["Mass"] or film["Nodule"])
    return truth


def vindr_flip(k):
    """(reader index 0-2, label) that one training radiologist marks opposite to the truth on film k."""
    mapped = harmonise.release_labels("vindr-cxr")
    return k % 3, mapped[k % len(mapped)]


def _vindr_dicom(film, k):
    """DICOM dataset of NIH film ``film`` as a 12-bit DX: MONOCHROME1 for every 4th film, a
    window on every 5th, age/sex in the header except film 2; film 3 claims JPEG Lossless
    (process 14), which the installed plugins cannot decode."""
    from pydicom.uid import JPEGLosslessSV1

    from cxr_tf.testing import dx_dataset

    age = None if k == 2 else int(film["age"])
    ds = dx_dataset(SAMPLE_DIR / "images" / film["image_index"], patient_id="", age=age,
                    sex=None if k == 2 else film["sex"])
    pixels = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns).astype(np.uint16) * 16
    if k % 4 == 0:
        ds.PhotometricInterpretation, pixels = "MONOCHROME1", 4095 - pixels
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    del ds.WindowCenter, ds.WindowWidth
    if k % 5 == 0:
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.astype("<u2").tobytes()
    if k == 3:
        from pydicom.encaps import encapsulate

        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(64) + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
    return ds


def write_vindr_release(root, count=48):
    """A VinDr-CXR 1.0.0 release under ``root/vindr-cxr``: ``annotations/image_labels_train.csv``
    (3 radiologists per film, one of them disagreeing on one finding, ``vindr_flip``),
    ``annotations/image_labels_test.csv`` (one consensus row per film) and the DICOM films
    ``train/<image_id>.dicom`` / ``test/<image_id>.dicom``."""
    release = Path(root) / "vindr-cxr"
    for folder in ("annotations", "train", "test"):
        (release / folder).mkdir(parents=True, exist_ok=True)
    films = nih_films(count)
    header_train = ["image_id", "rad_id", *VINDR_LABELS, "Other disease", "No finding"]
    header_test = ["image_id", *VINDR_LABELS, "Other diseases", "No finding"]
    train, test = [], []
    for k, film in films.iterrows():
        truth = vindr_truth(film)
        split = "test" if k >= VINDR_TEST_FROM else "train"
        if k not in VINDR_MISSING:
            _vindr_dicom(film, k).save_as(release / split / f"{vindr_image_id(k)}.dicom", enforce_file_format=True)
        if split == "test":
            test.append([vindr_image_id(k), *[truth[label] for label in VINDR_LABELS], 0, int(not any(truth.values()))])
            continue
        reader, flipped = vindr_flip(k)
        for r in range(3):
            votes = dict(truth)
            if r == reader:
                votes[flipped] = 1 - votes[flipped]
            train.append([vindr_image_id(k), f"R{1 + (k + r) % 17}", *[votes[label] for label in VINDR_LABELS], 0,
                          int(not any(votes.values()))])
    _vindr_dicom(films.iloc[0], 1).save_as(release / "test" / f"{vindr_image_id(9999)}.dicom",
                                           enforce_file_format=True)  # a film no table lists
    for name, header, rows in (("train", header_train, train), ("test", header_test, test)):
        with open(release / "annotations" / f"image_labels_{name}.csv", "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
    return release


# --------------------------------------------------------------------------- one per adapter
RELEASES = {
    "nih": write_nih_release,
    "chexpert": write_chexpert_release,
    "mimic-cxr": write_mimic_release,
    "padchest": write_padchest_release,
    "vindr-cxr": write_vindr_release,
}
"""{dataset name of ``cxr_tf.data.datasets.DATASETS``: writer(root) -> the folder of a small release
in its published format, written under ``root``}. ``tests/data/test_adapters.py`` reads each with
its adapter; a new adapter adds its writer here."""


def read_records(folder, num_labels=NUM_LABELS):
    """{image_index: parsed example (numpy values) + split} over every shard in folder; fails
    on a film written twice."""
    import tensorflow as tf

    from cxr_tf.data.records import parse_example, parse_shard_name

    examples = {}
    for shard in sorted(Path(folder).glob("*.tfrecord")):
        for raw in tf.data.TFRecordDataset(str(shard)):
            example = {k: v.numpy() for k, v in parse_example(raw, num_labels).items()}
            name = example["image_index"].decode()
            assert name not in examples, f"{name} written twice"
            examples[name] = dict(example, split=parse_shard_name(shard.name)[0])
    return examples
