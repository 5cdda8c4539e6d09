"""Shared test fixtures. Add fixtures here; never rewrite another issue's fixture."""

from pathlib import Path

import pytest

# Real NIH material (the repository root's sibling ../shared/data; see its README).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def sample_records(tmp_path_factory):
    """Records built by ``cxr_tf.build.build_records`` from the 150 real NIH films
    (../shared/data/nih-sample; the embedded sample when that folder is absent) at
    64 px, stratified split, seed 0. Returns the records folder (Path) holding
    ``{split}-*.tfrecord`` and ``manifest.json``. Read-only: do not write into it."""
    from cxr_tf.build import build_records

    out = tmp_path_factory.mktemp("sample_records")
    sample = SHARED_DATA / "nih-sample"
    if sample.is_dir():
        build_records(data_dir=sample, labels=sample / "Data_Entry_sample.csv", out=out,
                      image_size=64, seed=0, workers=2, progress=False)
    else:
        build_records(data_dir=None, out=out, image_size=64, seed=0, workers=2, progress=False)
    return out
