"""A real uvicorn server on a free loopback port, in a background thread: used by the
service tests and `tools/bench_serve.py`."""

import socket
import threading
import time


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """``LiveServer(app).start()`` serves ``app`` at ``.url`` until ``.stop()``."""

    def __init__(self, app, port=None):
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # log_config=None: uvicorn leaves the logging set-up alone (its dictConfig would close the
        # handlers already installed, pytest's log capture among them)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", log_config=None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self, timeout=30):
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the test server on {self.url} did not start within {timeout} s")
            time.sleep(0.05)
        return self

    def stop(self):
        self._server.should_exit = True
        self._thread.join(timeout=10)


def dx_dataset(png_path, patient_id="NIH-TEST", patient_name="Test^Film", accession="ACC0001",
               study_uid=None, body_part="CHEST", age=None, sex=None, view="PA"):
    """A real film (a PNG, e.g. ``cxr_tf/sample/images/*.png``) wrapped as a DICOM DX
    "For Presentation" image (pydicom Dataset with file meta; Explicit VR Little Endian,
    8-bit MONOCHROME2), with the patient/study identity given. For tests and benchmarks
    of the DICOM outputs and node: what a modality or PACS would send."""
    import datetime

    import cv2
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = cv2.imread(str(png_path), cv2.IMREAD_GRAYSCALE)
    if pixels is None:
        raise ValueError(f"{png_path}: not a readable image")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(png_path), {}, file_meta=meta, preamble=b"\0" * 128)
    now = datetime.datetime.now()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient_name, patient_id, ""
    ds.PatientSex = sex or ""
    if age is not None:
        ds.PatientAge = f"{int(age):03d}Y"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", accession, ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "DX", "cxr_tf test", 1, 1
    ds.BodyPartExamined, ds.ViewPosition = body_part, view
    ds.PatientOrientation = ["L", "F"] if view == "AP" else ["R", "F"]  # as seen from the tube
    ds.PresentationIntentType, ds.BurnedInAnnotation = "FOR PRESENTATION", "NO"
    ds.ImageLaterality, ds.PositionerType, ds.AcquisitionContextSequence = "U", "", []
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "51185008", "SCT", "Chest"
    ds.AnatomicRegionSequence = [region] if body_part == "CHEST" else []
    ds.PresentationLUTShape, ds.WindowCenter, ds.WindowWidth = "IDENTITY", 128, 256
    ds.ImagerPixelSpacing = [0.143 * 1024 / pixels.shape[0]] * 2  # NIH films: ~0.143 mm at 1024 px
    ds.DetectorType = "SCINTILLATOR"
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.LossyImageCompression = "00"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    return ds


def dicom_bytes(ds):
    """DICOM Part 10 bytes of ``ds`` (with its file meta)."""
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
