"""What the input gate (``cxr_tf.inference.gate``) learns from and is measured on: frontal chest
films as sites vary them, the same films made into what the gate must refuse, and pictures that
are not radiographs, all from material on disk offline.

Each *kind* is a function ``(film, rng) -> picture`` (uint8 (H, W) greyscale, 0 = black) and the
gate class it belongs to (``KINDS``). Films are the embedded NIH sample (``sample_films``), split
by ``HELD_OUT``: the gate is trained on the rest, and measured on these (the official NIH test
list, and the first rows of the table, which the other releases' test fixtures are made of).

Pictures that are not radiographs (``pictures``): photographs, micrographs, textures, documents.
The training set is scikit-image's bundled data images (``pip install scikit-image``; only the
training tool needs it); the held-out set is what matplotlib and scikit-learn ship (the photograph
of Grace Hopper, a product photograph, two scenes, a logo), which are never trained on. Documents
are rendered text, with a different seed for each set.
"""

import dataclasses
from pathlib import Path

import cv2
import numpy as np

FRONTAL = "frontal"
CLASSES = (FRONTAL, "inverted", "rotated", "lungs_not_in_view", "blank", "not_radiograph", "blurred")
"""The gate's classes, in the order of its output units; every class but the first is a refusal."""

HELD_OUT_ROWS = 48
"""The first rows of the sample table, held out: ``tests/releases.py`` writes the other releases'
fixtures from them, so the gate is measured on those releases with films it never saw."""


def _side(img):
    return max(img.shape[:2])


def _gamma(img, rng, low=0.6, high=1.7):
    table = (255.0 * (np.arange(256) / 255.0) ** rng.uniform(low, high)).astype(np.uint8)
    return table[img]


def frontal(film, rng):
    """A frontal film as another site, detector or processing could make it: crop, small rotation
    and scale, the film placed on a larger canvas (a child on an adult detector), left-right
    mirror (still frontal), gamma, contrast, a little blur and noise, side markers and labels."""
    h, w = film.shape
    area, aspect = rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.33)
    ch = int(min(h, round(h * np.sqrt(area * aspect))))
    cw = int(min(w, round(w * np.sqrt(area / aspect))))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    img = film[top:top + ch, left:left + cw]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.25:  # on a larger canvas: black, white or grey around the film
        scale = rng.uniform(1.1, 1.6)
        canvas = np.full((int(img.shape[0] * rng.uniform(1.0, scale)), int(img.shape[1] * scale)),
                         int(rng.choice([0, 255, rng.integers(0, 256)])), np.uint8)
        y, x = rng.integers(0, canvas.shape[0] - img.shape[0] + 1), rng.integers(0, canvas.shape[1] - img.shape[1] + 1)
        canvas[y:y + img.shape[0], x:x + img.shape[1]] = img
        img = canvas
    angle, scale = rng.uniform(-10, 10), rng.uniform(0.85, 1.1)
    m = cv2.getRotationMatrix2D((img.shape[1] / 2, img.shape[0] / 2), angle, scale)
    border = cv2.BORDER_CONSTANT if rng.random() < 0.5 else cv2.BORDER_REPLICATE
    img = cv2.warpAffine(np.ascontiguousarray(img), m, (img.shape[1], img.shape[0]), borderMode=border,
                         borderValue=int(rng.integers(0, 256)))
    img = _gamma(img, rng, 0.5, 2.0)
    low, high = rng.uniform(0, 50), rng.uniform(200, 255)
    img = np.clip(low + img.astype(np.float32) * (high - low) / 255.0, 0, 255)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0) * _side(img) / 128)
    if rng.random() < 0.3:
        img = img + rng.normal(0, rng.uniform(1, 8), img.shape)
    for _ in range(rng.integers(0, 3)):  # side markers and labels: small bright or dark blocks
        sy, sx = max(2, int(img.shape[0] * rng.uniform(0.03, 0.15))), max(2, int(img.shape[1] * rng.uniform(0.03, 0.25)))
        y, x = rng.integers(0, max(1, img.shape[0] - sy)), rng.integers(0, max(1, img.shape[1] - sx))
        img[y:y + sy, x:x + sx] = rng.choice([0, 255, rng.integers(0, 256)])
    return np.clip(img, 0, 255).astype(np.uint8)


def mirrored(film, rng):
    """A frontal film mirrored left to right: still a frontal film, which the gate must pass."""
    return np.ascontiguousarray(frontal(film, rng)[:, ::-1])


def inverted(film, rng):
    """A frontal film with its grey scale reversed (a MONOCHROME1/2 mix-up)."""
    return 255 - frontal(film, rng)


def _rotation(k):
    def rotate(film, rng):
        return np.ascontiguousarray(np.rot90(frontal(film, rng), k))
    rotate.__doc__ = f"A frontal film rotated by {90 * k} degrees."
    return rotate


def lungs_cropped_out(film, rng):
    """A part of a film that cannot show both lungs: a corner or patch a fifth to under half its
    side, or a band across its top or bottom."""
    img = frontal(film, rng)
    h, w = img.shape
    if rng.random() < 0.7:
        ch, cw = (int(s * rng.uniform(0.2, 0.45)) for s in (h, w))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        return np.ascontiguousarray(img[top:top + ch, left:left + cw])
    band = int(h * rng.uniform(0.15, 0.3))
    return np.ascontiguousarray(img[:band] if rng.random() < 0.5 else img[h - band:])


def blank(film, rng):
    """An empty exposure: one grey level with a faint gradient and faint noise."""
    h, w = film.shape
    level = rng.uniform(0, 255)
    ramp = np.linspace(-1, 1, w)[None, :] * rng.uniform(0, 12) + np.linspace(-1, 1, h)[:, None] * rng.uniform(0, 12)
    img = level + ramp + rng.normal(0, rng.uniform(0, 3), (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def noise(film, rng):
    """Noise: uniform, Gaussian, salt and pepper, or smoothed into blobs."""
    h, w = film.shape
    pick = rng.integers(4)
    if pick == 0:
        img = rng.uniform(0, 255, (h, w))
    elif pick == 1:
        img = rng.normal(rng.uniform(60, 200), rng.uniform(20, 80), (h, w))
    elif pick == 2:
        img = np.where(rng.random((h, w)) < 0.5, 0, 255) * (rng.random((h, w)) < rng.uniform(0.05, 1))
    else:
        img = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), rng.uniform(1, 4) * _side(film) / 64)
        img = (img - img.min()) / max(1e-6, float(np.ptp(img))) * 255
    return np.clip(img, 0, 255).astype(np.uint8)


def blurred(film, rng):
    """A frontal film blurred beyond reading (Gaussian, sigma 5-12 % of its side)."""
    img = frontal(film, rng)
    return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.05, 0.12) * _side(img))


# ---------------------------------------------------------------------- pictures that are not films

def _grey(img):
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    if img.dtype != np.uint8:
        img = img.astype(np.float64)
        img = (img - img.min()) / max(1e-9, float(np.ptp(img))) * 255
    return np.ascontiguousarray(img.astype(np.uint8))


def _training_pictures():
    try:
        import skimage
    except ImportError:
        raise ImportError("the gate's training pictures are scikit-image's data images: pip install scikit-image") from None
    folder = Path(skimage.__file__).parent / "data"
    files = sorted(p for p in folder.iterdir() if p.suffix in (".png", ".jpg"))
    return {p.name: _grey(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)) for p in files}


def _held_out_pictures():
    import matplotlib
    import sklearn

    mpl = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
    skl = Path(sklearn.__file__).parent / "datasets" / "images"
    files = [mpl / "grace_hopper.jpg", mpl / "Minduka_Present_Blue_Pack.png", mpl / "logo2.png",
             skl / "china.jpg", skl / "flower.jpg"]
    return {p.name: _grey(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)) for p in files}


def pictures(held_out):
    """{name: uint8 (H, W) grey picture} that are not radiographs: the held-out set (matplotlib's
    and scikit-learn's) or the training set (scikit-image's)."""
    return _held_out_pictures() if held_out else _training_pictures()


def view_of(picture, rng):
    """A picture as it might be sent: the whole of it or a crop, maybe mirrored, maybe inverted."""
    h, w = picture.shape
    f = rng.uniform(0.5, 1.0)
    ch, cw = max(8, int(h * f)), max(8, int(w * f * rng.uniform(0.8, 1.25)))
    ch, cw = min(ch, h), min(cw, w)
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    img = picture[top:top + ch, left:left + cw]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.2:
        img = 255 - img
    return np.ascontiguousarray(_gamma(img, rng, 0.7, 1.4))


_WORDS = ("patient", "report", "the", "of", "chest", "invoice", "total", "date", "and", "signed", "page",
          "name", "result", "normal", "dose", "lorem", "ipsum", "dolor", "amet", "table", "2026", "ref")


def document(film, rng):
    """A rendered page: lines of text in one of OpenCV's fonts, maybe ruled, maybe a dark theme."""
    h, w = (int(rng.uniform(400, 700)), int(rng.uniform(300, 500)))
    if rng.random() < 0.5:
        h, w = w, h
    paper, ink = (rng.uniform(200, 255), rng.uniform(0, 80))
    if rng.random() < 0.2:
        paper, ink = ink, paper
    img = np.full((h, w), int(paper), np.uint8)
    font = int(rng.choice([0, 1, 2, 3, 4, 6, 7]))
    scale = rng.uniform(0.4, 1.0)
    y = int(rng.uniform(20, 50))
    step = int(rng.uniform(16, 34) * scale + 8)
    while y < h - 10:
        text = " ".join(rng.choice(_WORDS, size=int(rng.integers(2, 10))))
        cv2.putText(img, text, (int(rng.uniform(5, 40)), y), font, scale, int(ink), 1, cv2.LINE_AA)
        if rng.random() < 0.15:
            cv2.line(img, (5, y + 5), (w - 5, y + 5), int(ink), 1)
        y += step
    return np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of picture: the gate class it belongs to and how it is made from a film."""

    name: str
    cls: str
    make: object
    uses_film: bool = True


KINDS = {k.name: k for k in (
    Kind("frontal", FRONTAL, frontal),
    Kind("mirrored", FRONTAL, mirrored),
    Kind("inverted", "inverted", inverted),
    Kind("rotated 90", "rotated", _rotation(1)),
    Kind("rotated 180", "rotated", _rotation(2)),
    Kind("rotated 270", "rotated", _rotation(3)),
    Kind("lungs cropped out", "lungs_not_in_view", lungs_cropped_out),
    Kind("blank", "blank", blank),
    Kind("noise", "not_radiograph", noise),
    Kind("blurred", "blurred", blurred),
    Kind("document", "not_radiograph", document, uses_film=False),
    Kind("photograph", "not_radiograph", None, uses_film=False),
)}
"""Every kind the gate is trained and measured on. "photograph" is made by ``view_of`` from
``pictures``; the rest by their function."""


def sample_films(held_out):
    """{image name: uint8 film} of the embedded NIH sample: the held-out films (the official test
    list and the first ``HELD_OUT_ROWS`` rows of the table) or the rest."""
    from cxr_tf.data.datasets import nih

    table = nih.read_label_table(nih.SAMPLE_LABELS)
    test = set((nih.SAMPLE_DIR / "test_list.txt").read_text().split())
    names = list(table["image_index"])
    keep = [n for i, n in enumerate(names) if (i < HELD_OUT_ROWS or n in test) == bool(held_out)]
    return {n: cv2.imread(str(nih.SAMPLE_DIR / "images" / n), cv2.IMREAD_GRAYSCALE) for n in keep}
