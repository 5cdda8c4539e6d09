"""What the reader budgets cost a good film, side by side in one run.

    python tools/bench_readers.py [--side 3000] [--repeats 5]

For good films of each kind (the 7 real NIH PNGs at 1,024 px shipped in tests/fixtures, and a
real film resized to ``--side`` px as 16-bit PNG, JPEG, and DICOM native, JPEG-LS (where
pyjpegls is installed) and JPEG 2000), prints the best-of-``--repeats`` milliseconds per film of:

- ``decoder``: the decoder alone (``cv2.imdecode``; pydicom's ``pixel_array``), no checks;
- ``in-process``: ``read_film`` with ``decode_seconds=None`` (the codestream checks, the decode
  and the conversion to 8-bit grey in this process: the reader before the time/memory guard);
- ``guarded``: ``read_film`` as the front ends call it (the same, in a guard child process:
  ``cxr_tf.data.decode_guard``),

and the ratios guarded / in-process and in-process / decoder. The child's start is paid once,
before timing, as a running front end has paid it.
"""

import argparse
import dataclasses
import io
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from bombs import encapsulated_dicom  # noqa: E402 - tests/ put on the path above
from cxr_tf.inference.readers import Limits, read_film  # noqa: E402

FILMS = sorted((ROOT / "tests" / "fixtures" / "nih-sample" / "images_001" / "images").glob("*.png"))


def good_films(side):
    """{kind: [file bytes]}: real films, and one resized to ``side`` px in each larger format."""
    films = {"png 1024 px (NIH)": [p.read_bytes() for p in FILMS]}
    grey = cv2.resize(cv2.imread(str(FILMS[0]), cv2.IMREAD_GRAYSCALE), (side, side), interpolation=cv2.INTER_CUBIC)
    twelve = (grey.astype(np.uint16) * 16 + np.random.default_rng(0).integers(0, 16, grey.shape)).astype(np.uint16)
    films[f"png 16-bit {side} px"] = [cv2.imencode(".png", twelve)[1].tobytes()]
    films[f"jpeg {side} px"] = [cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()]
    films[f"dicom native {side} px"] = [encapsulated_dicom(twelve, None)]
    syntaxes = [("jpeg 2000", pydicom.uid.JPEG2000Lossless)]
    if pydicom.pixels.get_encoder(pydicom.uid.JPEGLSLossless).is_available:
        syntaxes.append(("jpeg-ls", pydicom.uid.JPEGLSLossless))
    for label, syntax in syntaxes:
        films[f"dicom {label} {side} px"] = [encapsulated_dicom(twelve, syntax)]
    return films


def decoder_only(data):
    if data[128:132] == b"DICM":
        return pydicom.dcmread(io.BytesIO(data)).pixel_array
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def best_ms(read, films, repeats):
    """Best of ``repeats`` rounds of the mean milliseconds per film of ``read`` over ``films``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for data in films:
            read(data)
        best = min(best, (time.perf_counter() - start) * 1000 / len(films))
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=3000, help="side of the larger good films (px)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    in_process = dataclasses.replace(Limits(), decode_seconds=None)
    ways = {"decoder": decoder_only,
            "in-process": lambda data: read_film(data, limits=in_process),
            "guarded": lambda data: read_film(data)}
    films = good_films(args.side)
    read_film(films["png 1024 px (NIH)"][0])  # the guard's child started, as in a running service
    print(f"{'film':28s} {'KiB':>7s} {'decoder':>9s} {'in-process':>11s} {'guarded':>9s}   guarded/in-process"
          "   in-process/decoder   (ms per film, best of %d)" % args.repeats)
    for kind, data in films.items():
        ms = {}
        for _ in range(args.repeats):  # interleaved rounds: a change of machine speed hits all alike
            for way, read in ways.items():
                ms[way] = min(ms.get(way, float("inf")), best_ms(read, data, 1))
        print(f"{kind:28s} {np.mean([len(d) for d in data]) / 1024:7.0f} {ms['decoder']:9.1f} "
              f"{ms['in-process']:11.1f} {ms['guarded']:9.1f}   x{ms['guarded'] / ms['in-process']:.2f}"
              f"{'':16s}x{ms['in-process'] / ms['decoder']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
