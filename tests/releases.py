"""Small copies of public chest X-ray releases, written at test time in each release's exact
format (file names, folders, headers, encodings) from the real NIH sample films
(``cxr_tf/sample``, 128 px). Each film's labels come from its NIH labels through the
harmonised findings table (``cxr_tf/resources/findings.csv``), so a model trained on NIH
can be validated on a fixture meaningfully; release labels without an NIH counterpart are
written as the release's negative. ``write_<dataset>_release(root, ...) -> Path`` returns
the release folder."""

import csv
import gzip
import hashlib
import io
from pathlib import Path

import cv2
import numpy as np

from cxr_tf.data import harmonise
from cxr_tf.data.builder import SAMPLE_DIR, SAMPLE_LABELS
from cxr_tf.data.datasets import nih


def nih_films(count):
    """The first ``count`` rows of the NIH sample table (film order of every fixture)."""
    table = nih.read_label_table(SAMPLE_LABELS)
    return table.iloc[:count].reset_index(drop=True)


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
            cv2.imwrite(str(folder / padchest_image_id(k)), (pixels.astype(np.uint16) * 4095 // 255))
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
