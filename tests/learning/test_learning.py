"""Every registered architecture learns synthetic planted-finding films (held-out macro AUC
>= 0.9). In a folder of its own, collected first, so that one of the suite's two workers (pytest-xdist,
loadfile, files in collection order: setup.cfg) starts the longest file at once while the other runs
the rest; the trained models are the session fixture ``learned`` (tests/conftest.py)."""

import pytest
from sklearn.metrics import roc_auc_score

from conftest import inputs_for
from cxr_tf.models import ARCHITECTURES

ARCHS = sorted(ARCHITECTURES)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_learns_synthetic_films(learned, arch):
    model, size, x_test, y_test = learned(arch)
    p = model.predict(inputs_for(arch, x_test), verbose=0, batch_size=64)
    auc = roc_auc_score(y_test, p, average="macro")
    print(f"{arch}: held-out macro AUC {auc:.3f}")
    assert auc >= 0.9
