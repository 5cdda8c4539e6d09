"""The published chest X-ray weights ``python -m cxr_tf.import_weights`` knows, one row each.

torchxrayvision's rows copy its own table (``torchxrayvision.models.model_urls``, version 1.5.7,
Apache-2.0): the output order with an empty name for a slot the weights were not trained on, the
operating thresholds ``op_threshs`` (chosen by xrv on its held-out data; NaN where it gives
none), the input size and the file name it downloads. The CheXNet rows describe the two
PyTorch reproductions whose checkpoints users ask about (arnoweng/CheXNet, jrzech/reproduce-chexnet).

A weight set is named with ``--weights-set NAME`` or recognised by its published file name
(``WeightSet.files``); a file that is neither is read by its structure (``layout`` only).
"""

from dataclasses import dataclass, field

NAN = float("nan")
XRV_ORDER = ("Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis",
             "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia",
             "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum")
"""``torchxrayvision.datasets.default_pathologies``: the 18 outputs of every xrv classifier."""
NIH_ORDER = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
             "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
"""The 14 outputs of both CheXNet reproductions (NIH's order)."""

XRV_LICENCE = "Apache-2.0 (torchxrayvision); the training datasets' own terms may also apply"
XRV_GET = "https://github.com/mlmed/torchxrayvision/releases/tag/v1 (or ~/.torchxrayvision/ after xrv downloads it)"
XRV_SPLIT = ("random train/test split of each dataset made by xrv's training script (seed 0); xrv does not "
             "publish which films were held out, so whether a given film was in its training set is unknown")
XRV_CITATION = "Cohen et al., TorchXRayVision: A library of chest X-ray datasets and models, MIDL 2022"


@dataclass(frozen=True)
class Layout:
    """How a checkpoint of one source is laid out: ``family`` (densenet | resnet), key
    ``prefixes`` to strip, the ``classifier`` key stem, the ``preprocessing``
    (``cxr_tf.models.imported.PREPROCESSING``) and what the source's own pipeline does to a film
    (``pipeline``, for the docs and import.json)."""

    name: str
    family: str
    preprocessing: str
    pipeline: str
    prefixes: tuple = ()
    classifier: str | None = None
    resize: str = "xrv"
    """How a film becomes the model's input as the source did it (``cxr_tf.data.film_resize``)."""


LAYOUTS = {
    "xrv-densenet": Layout("xrv-densenet", "densenet", "xrv",
                           "xrv.utils.load_image: 8-bit film -> x / 255 * 2048 - 1024, first channel; "
                           "XRayCenterCrop (centre square); XRayResizer(224): skimage.transform.resize, "
                           "bilinear, anti-aliased"),
    "xrv-resnet": Layout("xrv-resnet", "resnet", "xrv",
                         "as xrv-densenet, resized to 512 (XRayResizer(512))", prefixes=("model.",)),
    "chexnet-arnoweng": Layout("chexnet-arnoweng", "densenet", "imagenet",
                               "PIL RGB; Resize(256), TenCrop(224) averaged; ToTensor; ImageNet Normalize "
                               "(cxr_tf uses the whole film at 224: no ten-crop)",
                               prefixes=("module.densenet121.", "densenet121.", "module."), classifier="classifier.0",
                               resize="torchvision"),
    "chexnet-jrzech": Layout("chexnet-jrzech", "densenet", "imagenet",
                             "PIL RGB; Resize(224), CenterCrop(224); ToTensor; ImageNet Normalize",
                             prefixes=("module.",), classifier="classifier.0", resize="torchvision"),
}


@dataclass(frozen=True)
class WeightSet:
    """One published weight file: ``labels`` in output order ('' = untrained slot),
    ``op_threshs`` (or None), ``input_size``, what it was ``trained_on`` and how it was
    ``split``, ``licence``, where to ``get`` it, its published ``files`` names."""

    name: str
    layout: str
    labels: tuple
    input_size: int
    trained_on: str
    split: str
    licence: str
    get: str
    op_threshs: tuple | None = None
    files: tuple = ()
    datasets: tuple = field(default=())
    """Our dataset names (``cxr_tf.data.datasets``) among its training data: evaluate warns on overlap."""
    citation: str = ""

    @property
    def trained(self):
        """The names of the trained slots, in output order."""
        return tuple(name for name in self.labels if name)


def _xrv(name, file, trained_on, datasets, labels, op_threshs, size=224, layout="xrv-densenet"):
    return WeightSet(name, layout, tuple(labels), size, trained_on, XRV_SPLIT, XRV_LICENCE, XRV_GET,
                     tuple(float(t) for t in op_threshs), (file,), tuple(datasets), XRV_CITATION)


def _slots(*names):
    """xrv's 18 slots with only ``names`` trained."""
    return tuple(n if n in names else "" for n in XRV_ORDER)


_CHEX_NAMES = ("Atelectasis", "Consolidation", "Pneumothorax", "Edema", "Effusion", "Pneumonia", "Cardiomegaly",
               "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum")

WEIGHT_SETS = {ws.name: ws for ws in (
    _xrv("densenet121-res224-all",
         "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
         "NIH ChestX-ray14, PadChest, CheXpert, MIMIC-CXR (CheXpert labeller), Google (NIH subset), OpenI, RSNA "
         "Pneumonia (Kaggle)", ("nih", "padchest", "chexpert", "mimic-cxr"), XRV_ORDER,
         [0.07422872, 0.038290843, 0.09814756, 0.0098118475, 0.023601074, 0.0022490358, 0.010060724, 0.103246614,
          0.056810737, 0.026791653, 0.050318155, 0.023985857, 0.01939503, 0.042889766, 0.053369623, 0.035975814,
          0.20204692, 0.05015312]),
    _xrv("densenet121-res224-nih", "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
         "NIH ChestX-ray14", ("nih",), XRV_ORDER[:14] + ("",) * 4,
         [0.039117552, 0.0034529066, 0.11396341, 0.0057298196, 0.00045666535, 0.0018880932, 0.012037827,
          0.038744126, 0.0037213727, 0.014730946, 0.016149804, 0.054241467, 0.037198864, 0.0004403434,
          NAN, NAN, NAN, NAN]),
    _xrv("densenet121-res224-pc", "pc-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
         "PadChest", ("padchest",), XRV_ORDER[:14] + ("", "Fracture", "", ""),
         [0.031012505, 0.013347598, 0.081435576, 0.001262615, 0.002587246, 0.0035944257, 0.0023071, 0.055412333,
          0.044385884, 0.042766232, 0.043258056, 0.037629247, 0.005658899, 0.0091741895, NAN, 0.026507627, NAN,
          NAN]),
    _xrv("densenet121-res224-chex", "chex-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
         "CheXpert", ("chexpert",), _slots(*_CHEX_NAMES),
         [0.1988969, 0.05710573, NAN, 0.0531293, 0.1435217, NAN, NAN, 0.27212676, 0.07749717, NAN, 0.19712369, NAN,
          NAN, NAN, 0.09932402, 0.09273402, 0.3270967, 0.10888247]),
    _xrv("densenet121-res224-rsna", "kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
         "RSNA Pneumonia Detection Challenge (Kaggle; films from NIH ChestX-ray14)", ("nih",),
         _slots("Pneumonia", "Lung Opacity"),
         [NAN] * 8 + [0.13486601] + [NAN] * 7 + [0.13511065, NAN]),
    _xrv("densenet121-res224-mimic_nb", "mimic_nb-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
         "MIMIC-CXR (NegBio labeller)", ("mimic-cxr",), _slots(*_CHEX_NAMES),
         [0.08558747, 0.011884617, NAN, 0.0040595434, 0.010733786, NAN, NAN, 0.118761964, 0.022924708, NAN,
          0.06358637, NAN, NAN, NAN, 0.022143636, 0.017476924, 0.1258702, 0.014020768]),
    _xrv("densenet121-res224-mimic_ch", "mimic_ch-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
         "MIMIC-CXR (CheXpert labeller)", ("mimic-cxr",), _slots(*_CHEX_NAMES),
         [0.09121389, 0.010573786, NAN, 0.005023008, 0.003698257, NAN, NAN, 0.08001232, 0.037242252, NAN,
          0.05006329, NAN, NAN, NAN, 0.019866971, 0.03823637, 0.11303808, 0.0069147074]),
    _xrv("resnet50-res512-all", "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt",
         "PadChest, NIH ChestX-ray14, RSNA Pneumonia, SIIM-ACR Pneumothorax, VinDr-CXR",
         ("padchest", "nih", "vindr-cxr"), XRV_ORDER,
         [0.51570356, 0.50444704, 0.53787947, 0.50723547, 0.5025118, 0.5035252, 0.5038076, 0.51862943, 0.5078151,
          0.50724894, 0.5056339, 0.510706, 0.5053923, 0.5020846, NAN, 0.5080557, 0.5138526, NAN],
         size=512, layout="xrv-resnet"),
    WeightSet("chexnet-arnoweng", "chexnet-arnoweng", NIH_ORDER, 224,
              "NIH ChestX-ray14 (DenseNet121 from ImageNet weights, CheXNet recipe)",
              "the repository's own train/val/test image lists (ChestX-ray14/labels/); whether a given NIH film "
              "was in its training list is answered only by those lists",
              "see https://github.com/arnoweng/CheXNet (the repository's licence file)",
              "https://github.com/arnoweng/CheXNet: model.pth.tar in the repository", None, ("model.pth.tar",),
              ("nih",), "arnoweng/CheXNet (reproduction of Rajpurkar et al., 2017)"),
    WeightSet("chexnet-jrzech", "chexnet-jrzech", NIH_ORDER, 224,
              "NIH ChestX-ray14 (DenseNet121 from ImageNet weights, CheXNet recipe)",
              "the repository's own patient split (nih_labels.csv, column fold); films of its train and val "
              "folds were seen in training",
              "see https://github.com/jrzech/reproduce-chexnet (the repository's licence file)",
              "https://github.com/jrzech/reproduce-chexnet: pretrained/checkpoint", None, ("checkpoint",),
              ("nih",), "jrzech/reproduce-chexnet (reproduction of Rajpurkar et al., 2017)"),
)}


def for_file(name):
    """The WeightSet whose published file name is ``name`` (a base name), else None."""
    return next((ws for ws in WEIGHT_SETS.values() if name in ws.files), None)


def get(name):
    """The WeightSet ``name``; ValueError listing the known names otherwise."""
    if name not in WEIGHT_SETS:
        raise ValueError(f"unknown weight set {name!r}: expected one of {', '.join(WEIGHT_SETS)}")
    return WEIGHT_SETS[name]
