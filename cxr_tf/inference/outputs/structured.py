"""One mapping from a triage result to coded content: what the DICOM SR
(``cxr_tf.inference.outputs.dicom_sr``), the Grad-CAM Secondary Captures
(``cxr_tf.inference.outputs.heatmap_sc``) and the FHIR Bundle (``cxr_tf.inference.outputs.fhir``) say.

The input is the dict ``Predictor`` produces for one film (``predict --json``)::

    {"file", "probabilities": {finding: p}, "uncertainty": {finding: std},
     "findings": [positive findings], "triage": {"level", "action"}, "message"}

plus the run's description (``Predictor.describe()``: arch, run_dir, thresholds,
split_method, test_metrics). ``finding_rows`` and ``model_identity`` turn them into
plain values, and the three encoders only spell those values in their format, so the
three outputs cannot disagree.

Codes: SNOMED CT for the findings (the concepts of DICOM's own code dictionary,
pydicom.sr.codedict, where it has one); the private scheme ``99CXRTF`` (DICOM PS3.16
8.2: a "99" prefix marks a local scheme) for Pleural_Thickening (no SNOMED concept we
could verify offline) and for a label of another label set. The SR names its other
concepts with published codes (``dicom_sr``); FHIR names the triage level, the MC-dropout
uncertainty and the decision threshold in ``PRIVATE_SYSTEM``.
"""

import dataclasses
from pathlib import Path

from pydicom.uid import generate_uid

PRIVATE_SCHEME = "99CXRTF"
"""Coding scheme designator of our local codes (DICOM; in FHIR the system ``PRIVATE_SYSTEM``)."""
PRIVATE_SCHEME_NAME = "cxr_tf local codes"
"""Its name in an SR's Coding Scheme Identification Sequence (the declaration of a local scheme)."""
PRIVATE_SYSTEM = "urn:cxr-tf:codes"
SNOMED_SYSTEM = "http://snomed.info/sct"
MANUFACTURER = "cxr_tf"

# finding label -> (scheme designator, code value, code meaning)
FINDING_CODES = {
    "Atelectasis": ("SCT", "46621007", "Atelectasis"),
    "Cardiomegaly": ("SCT", "287272002", "Cardiomegaly"),
    "Effusion": ("SCT", "60046008", "Pleural effusion"),
    "Infiltration": ("SCT", "409609008", "Radiologic infiltrate of lung"),
    "Mass": ("SCT", "4147007", "Mass"),
    "Nodule": ("SCT", "27925004", "Nodule"),
    "Pneumonia": ("SCT", "233604007", "Pneumonia"),
    "Pneumothorax": ("SCT", "36118008", "Pneumothorax"),
    "Consolidation": ("SCT", "95436008", "Lung consolidation"),
    "Edema": ("SCT", "19242006", "Pulmonary edema"),
    "Emphysema": ("SCT", "87433001", "Pulmonary emphysema"),
    "Fibrosis": ("SCT", "51615001", "Pulmonary fibrosis"),
    "Pleural_Thickening": (PRIVATE_SCHEME, "PLEURAL_THICK", "Pleural thickening"),
    "Hernia": ("SCT", "84089009", "Hiatal hernia"),
}

# Our own concepts: (code value, code meaning) in PRIVATE_SCHEME.
TRIAGE_LEVEL = ("TRIAGE_LEVEL", "Triage level")
TRIAGE_LEVELS = {"urgent": ("URGENT", "Urgent"), "review": ("REVIEW", "Review"),
                 "routine": ("ROUTINE", "Routine")}
MC_STD = ("MC_DROPOUT_STD", "Monte-Carlo dropout standard deviation of probability")
THRESHOLD = ("THRESHOLD", "Decision threshold")
NOT_PROCESSED = ("NOT_PROCESSED", "Received, not analysed")
"""A film that was received and got no verdict (``results.NotProcessed``); its reason is coded
``NOT_PROCESSED_<REASON>`` (``not_processed_code``). The SR writes these concepts with published
codes (``dicom_sr``); FHIR with these, in ``PRIVATE_SYSTEM``."""
DISCLAIMER = ("Decision aid, not a diagnosis: these findings come from a machine-learning model "
              "(cxr_tf) trained on chest X-ray labels mined from radiology reports (the run's provenance "
              "names the data). A radiologist must read "
              "the film; do not act on this result alone. Not a cleared medical device.")


def not_processed_code(not_processed):
    """(code value, code meaning) in PRIVATE_SCHEME of a ``results.NotProcessed`` reason."""
    from cxr_tf.inference.results import REASONS

    return f"{NOT_PROCESSED[0]}_{not_processed.reason.upper()}", f"Not analysed: {REASONS[not_processed.reason]}"


@dataclasses.dataclass(frozen=True)
class FindingRow:
    """One finding of one film: probability (MC mean, 0..1), uncertainty (MC std),
    threshold (the run's), positive (probability >= threshold, as in triage)."""

    label: str
    scheme: str
    code: str
    meaning: str
    probability: float
    uncertainty: float
    threshold: float
    positive: bool


def finding_code(label):
    """(scheme, code, meaning) of a finding label; a label of a run trained on another
    label set that we have no code for gets a local 99CXRTF code named after it."""
    if label in FINDING_CODES:
        return FINDING_CODES[label]
    return PRIVATE_SCHEME, label.upper().replace(" ", "_")[:16], label.replace("_", " ")  # SH: 16 characters


def finding_rows(result, thresholds):
    """[FindingRow] in the run's label order (that of ``result["probabilities"]``) for a
    successful triage result (see module doc).

    thresholds: {finding: 0..1}, the run's (``Predictor.thresholds``)."""
    if "error" in result:
        raise ValueError(f"{result.get('file')}: no triage result to encode ({result['error']})")
    rows = []
    for label in result["probabilities"]:
        scheme, code, meaning = finding_code(label)
        rows.append(FindingRow(label, scheme, code, meaning, float(result["probabilities"][label]),
                               float(result["uncertainty"][label]), float(thresholds[label]),
                               label in result["findings"]))
    return rows


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """The algorithm behind a result: architecture, run name (the run folder's
    name), training split method, test macro AUC (None when the run has no test
    metrics), MC samples, the digest of model.keras, the evidence status (``evidence.py``),
    the cxr_tf version."""

    arch: str
    run_name: str
    split_method: str
    test_macro_auc: float | None
    samples: int
    model_sha256: str | None = None
    status: str = "unknown"
    software: str = ""

    @property
    def name(self):
        return f"cxr_tf {self.arch}"

    @property
    def version(self):
        return self.run_name

    def parameters(self, gate=None, caveats=None):
        """["key=value"] for the algorithm-parameters fields of SR and FHIR: the run, and with a
        film's ``gate`` record (``FilmResult.gate``) and ``caveats``, what the input gate said of
        it and what the run has not shown."""
        auc = "n/a" if self.test_macro_auc is None else f"{self.test_macro_auc:.4f}"
        params = [f"arch={self.arch}", f"run={self.run_name}", f"cxr_tf={self.software}",
                  f"model_sha256={self.model_sha256 or 'n/a'}", f"split={self.split_method}",
                  f"test_macro_auc={auc}", f"mc_samples={self.samples}", f"evidence={self.status}"]
        if gate is not None:
            params.append("input_gate=off" if gate.get("off") else
                          f"input_gate={gate['version']} frontal_score={gate['score']:.4f}")
        params += [f"caveat={c}" for c in caveats or ()]
        return params

    def software_versions(self, description):
        """SoftwareVersions of the Contributing Equipment (LO, 64 characters each)."""
        gate = description.get("gate")
        return [f"cxr_tf {self.software}", f"run {self.run_name}"[:64],
                f"input gate {gate['version']}"[:64] if gate else "input gate off"]


def model_identity(description):
    """ModelIdentity from ``Predictor.describe()``."""
    from cxr_tf import __version__

    test = description.get("test_metrics") or {}
    auc = test.get("macro_auc") if isinstance(test, dict) else None
    return ModelIdentity(arch=str(description.get("arch") or "unknown"),
                         run_name=Path(description["run_dir"]).name,
                         split_method=str(description.get("split_method") or "unknown"),
                         test_macro_auc=None if auc is None else float(auc),
                         samples=int(description.get("samples") or 0),
                         model_sha256=description.get("model_sha256"),
                         status=str(description.get("status") or "unknown"), software=__version__)


def device_uid(description):
    """The Device UID of the model behind ``description`` (``Predictor.describe()``), the same in the
    SR (observer and Contributing Equipment) and in FHIR (``Device.identifier``).

    Derived from the SHA-256 of the run's model.keras and the backend: the same run gives the same
    UID on every host and at every start; a retrained or re-imported model (other weights) or an
    export (another backend) another. A description without the digest (written by hand) falls
    back to the architecture and run name."""
    digest = description.get("model_sha256")
    sources = ([MANUFACTURER, "model", digest, str(description.get("backend") or "keras")] if digest else
               [MANUFACTURER, str(description.get("arch")), Path(str(description.get("run_dir"))).name])
    return generate_uid(entropy_srcs=sources)
