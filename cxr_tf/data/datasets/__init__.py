"""Dataset adapters: one module per public chest X-ray release, each reading the release
exactly as published and returning the same ``Release`` (``cxr_tf.data.datasets.base``
documents the interface). ``get(name)`` is the registry; ``recognise(data_dir)`` names the
releases a folder looks like (to say so when ``--dataset`` is wrong); ``check_options`` checks
the release-specific build options (an adapter's ``OPTIONS``).

Pure pandas/numpy: importing an adapter never imports TensorFlow.
"""

from importlib import import_module

DATASETS = {
    "nih": "cxr_tf.data.datasets.nih",
    "chexpert": "cxr_tf.data.datasets.chexpert",
    "mimic-cxr": "cxr_tf.data.datasets.mimic_cxr",
    "padchest": "cxr_tf.data.datasets.padchest",
    "vindr-cxr": "cxr_tf.data.datasets.vindr_cxr",
}
"""Registry: ``--dataset`` name -> adapter module."""
DEFAULT = "nih"
"""The release built when none is named (its ``SAMPLE`` is the build without flags)."""


def get(name):
    """The adapter module of dataset ``name``; ValueError listing the known ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return import_module(DATASETS[name])


def recognise(data_dir):
    """{name: what was found} for every dataset whose release files ``data_dir`` holds."""
    found = {}
    for name in DATASETS:
        what = get(name).looks_like(data_dir)
        if what:
            found[name] = what
    return found


def check_options(name, options):
    """``options`` ({option: value}) for dataset ``name``: ValueError for an option its adapter
    does not declare in ``OPTIONS`` (naming the datasets that do)."""
    declared = get(name).OPTIONS
    for option in options:
        if option not in declared:
            owners = [other for other in DATASETS if option in get(other).OPTIONS]
            raise ValueError(f"--{option} applies to --dataset {', '.join(owners)}, not to {name}")
    return dict(options)
