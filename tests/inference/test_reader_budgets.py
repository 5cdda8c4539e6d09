"""Readers with a budget (issue 28): each bomb of the issue's table, made at test time by
``tests/bombs.py`` (scaled down, with the limit it crosses scaled alike where the full size
would cost the suite seconds; ``tools/fuzz_readers.py`` runs them at full size), is a per-film
error naming the limit; FIFOs and devices are refused before they are opened; the guard
process bounds the decode's time and memory when the codestream checks are relaxed; and a
good film beside a bomb gets its result."""

import dataclasses
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import bombs
from conftest import FULL_SIZE_FILMS
from cxr_tf.data.decode_guard import DecodeGuard
from cxr_tf.data.images import ImageError, film_to_png, read_image
from cxr_tf.inference.readers import FilmError, Limits, read_film

GOOD = FULL_SIZE_FILMS[0].read_bytes()
SMALL = 16 * 2**20

# kind: (the bomb's bytes, the limits it is read under, what the error says)
BOMBS = {
    "jpeg-ls 46,000 px codestream under a 256 px header": (
        lambda: bombs.jpeg_ls_dicom(), Limits(), "2,116,000,000 pixels exceeds the pixel limit"),
    "jpeg-ls codestream larger than Rows/Columns, within the pixel limit": (
        lambda: bombs.jpeg_ls_dicom(256, 4000), Limits(), "codestream is 4000 x 4000 pixels but Columns x Rows"),
    "jpeg 2000 46,000 px codestream under a 256 px header": (
        lambda: bombs.jpeg2000_dicom(), Limits(), "2,116,000,000 pixels exceeds the pixel limit"),
    "deflated dicom inflating past the limit": (
        lambda: bombs.deflated_dicom(2 * SMALL), Limits(max_decoded_bytes=SMALL),
        "inflates to more than 16,777,216 bytes, over the decoded-bytes limit"),
    "progressive jpeg of 2,000 scans": (
        lambda: bombs.progressive_jpeg(512, 2000), Limits(), "2,000 scans exceeds the scan limit of 64"),
    "progressive jpeg of 64 scans of 16 Mpx": (
        lambda: bombs.progressive_jpeg(4000, 64), Limits(),
        "64 scans over 4000 x 4000 pixels is 1,024,000,000 pixel passes, over the scan-work limit of 1,000,000,000"),
    "png of zeros within the pixel limit (16-bit RGBA)": (
        lambda: bombs.png_of_zeros(2048, 2048, 6, 16), Limits(max_decoded_bytes=SMALL),
        "decoding needs 33,554,432 bytes .* over the decoded-bytes limit of 16,777,216"),
}


@pytest.mark.parametrize("kind", BOMBS)
def test_each_bomb_is_a_film_error_naming_its_limit(kind):
    make, limits, says = BOMBS[kind]
    data = make()
    with pytest.raises(FilmError, match=f"bomb: .*{says}"):
        read_film(data, name="bomb", limits=limits)  # through the guard process
    with pytest.raises(FilmError, match=f"bomb: .*{says}"):  # and in this process: the checks come first
        read_film(data, name="bomb", limits=dataclasses.replace(limits, decode_seconds=None))


def test_the_table_at_full_size_costs_this_process_nothing(tmp_path):
    """Issue 28's JPEG-LS (64 KB, 46,000 px) and progressive JPEG (7,000 px, 20,000 scans) at
    full size, read in a fresh process with the default limits: refused, and the process's peak
    memory grows by less than 50 MB (a naive reader: 8.2 GB, and 184 s)."""
    (tmp_path / "jpegls.dcm").write_bytes(bombs.jpeg_ls_dicom())
    (tmp_path / "progressive.jpg").write_bytes(bombs.progressive_jpeg(7000, 20_000))
    script = (
        "import resource, sys\n"
        "from cxr_tf.inference.readers import FilmError, Limits, read_film\n"
        "limits = Limits(decode_seconds=None)\n"
        f"read_film({str(FULL_SIZE_FILMS[0])!r}, limits=limits)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        read_film(path, limits=limits)\n"
        "    except FilmError as err:\n"
        "        print(err)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "jpegls.dcm"), str(tmp_path / "progressive.jpg")],
                         capture_output=True, text=True, check=True, timeout=120).stdout.splitlines()
    assert "pixel limit" in out[0] and "20,000 scans exceeds the scan limit" in out[1]
    assert int(out[2]) < 50 * 1024  # kB


def test_guard_bounds_time_and_memory_then_decodes_the_next_film():
    """With the codestream checks relaxed, the guard's child process is what stops a bomb: a
    slow progressive JPEG ends on the time limit, a 134 MB PNG on a memory limit of 96 MB, and the next
    (good) film is decoded by a fresh child."""
    guard = DecodeGuard(seconds=1, memory=96 * 2**20)
    try:
        relaxed = Limits(max_scans=10**6, max_scan_pixels=10**15, max_decoded_bytes=2**31)
        with pytest.raises(ImageError, match="slow.jpg: decoding took longer than the time limit of 1 s"):
            guard.decode(bombs.progressive_jpeg(3000, 3000), "slow.jpg", relaxed, dicom=False)
        with pytest.raises(ImageError, match="big.png: .*memory limit of 100,663,296 bytes"):
            guard.decode(bombs.png_of_zeros(4096, 4096, 6, 16), "big.png", relaxed, dicom=False)
        pixels, meta, header = guard.decode(GOOD, "good.png", Limits(), dicom=False)
        assert pixels.shape == (1024, 1024) and meta is None and header is None
    finally:
        guard.close()


def _within(seconds, call):
    """``call()``'s exception (or None), failing the test if it has not returned in ``seconds``
    (a reader that opens a FIFO blocks forever: the test must not)."""
    outcome = {}

    def run():
        try:
            outcome["result"] = call()
        except Exception as err:  # noqa: BLE001 - returned to the test to check
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    return outcome


def test_fifo_and_devices_are_refused_before_they_are_opened(tmp_path):
    fifo = tmp_path / "film.png"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (Path("/dev/zero"), "a device")):
        outcome = _within(20, lambda path=path: read_film(path))
        assert isinstance(outcome.get("error"), FilmError)
        assert str(outcome["error"]) == f"{path}: is {kind}, not a regular file; a film must be a file"
        outcome = _within(20, lambda path=path: read_image(path))
        assert isinstance(outcome.get("error"), ImageError) and kind in str(outcome["error"])
        assert _within(20, lambda path=path: film_to_png(path, 64))["result"] == (
            None, f"is {kind}, not a regular file; a film must be a file")  # the builder's worker task


def test_a_good_film_beside_bombs_gets_its_result(tiny_run, tmp_path):
    """One request of bombs and a good film (the service's and the node's path): the good film
    is processed, every bomb is "not processed" as unreadable with the limit named."""
    from cxr_tf.inference.predictor import Predictor

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    predictor = Predictor(tiny_run, samples=2, gate=False)
    films = [("jpegls.dcm", bombs.jpeg_ls_dicom()), ("progressive.jpg", bombs.progressive_jpeg(512, 2000)),
             str(fifo), ("good.png", GOOD), str(Path("/dev/zero"))]
    results = _within(120, lambda: predictor.predict(films))["result"]
    assert [r.file for r in results] == ["jpegls.dcm", "progressive.jpg", str(fifo), "good.png", "/dev/zero"]
    good = results[3]
    assert good.not_processed is None and set(good.probabilities) == set(predictor.labels)
    for result, says in zip(results[:3] + results[4:], ["pixel limit", "scan limit", "FIFO", "device"]):
        assert result.not_processed is not None and result.not_processed.reason == "unreadable"
        assert says in result.not_processed.message
