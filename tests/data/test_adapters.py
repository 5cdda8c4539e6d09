"""Every dataset adapter of the registry (``cxr_tf.data.datasets.DATASETS``), looped over: it declares
the interface of ``cxr_tf.data.datasets.base``, a small release in its published format is written
for it (``releases.RELEASES``), it recognises that release and no other adapter claims it, it reads
it into a ``Release`` whose labels are its column of ``cxr_tf/resources/findings.csv``, and it has a
page in ``docs/datasets/``. A new adapter is tested here by adding its writer to tests/releases.py;
the release-specific checks (what the tables say, bad tables) stay in the adapters' own files."""

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import releases

from cxr_tf.data import datasets, harmonise
from cxr_tf.data.datasets.base import FRONTAL, SEXES, Option, Release

NAMES = sorted(datasets.DATASETS)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "datasets"
SPLITS = ("train", "val", "test", None)
OPTIONS = [(name, option) for name in NAMES for option in datasets.get(name).OPTIONS]
"""(dataset, option) for every release-specific option an adapter declares."""


@pytest.fixture(scope="module")
def release_of(tmp_path_factory):
    """``release_of(name)`` -> the folder of dataset ``name``'s release from ``releases.RELEASES``,
    written once per module (on first use, so ``-k NAME`` writes only that one)."""
    written = {}

    def get(name):
        if name not in releases.RELEASES:
            pytest.fail(f"tests/releases.py has no writer for dataset {name!r}: add "
                        f"RELEASES[{name!r}] = write_..._release(root) -> folder of a small release in its "
                        "published format")
        if name not in written:
            folder = releases.RELEASES[name](tmp_path_factory.mktemp(name))
            assert Path(folder).is_dir(), f"RELEASES[{name!r}] returned {folder!r}, not a folder"
            written[name] = Path(folder)
        return written[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_adapter_declares_the_interface(name):
    adapter = datasets.get(name)
    assert adapter.NAME == name, f"{adapter.__name__}.NAME is {adapter.NAME!r}, its registry key {name!r}"
    assert isinstance(adapter.TITLE, str) and adapter.TITLE.strip(), f"{name}: TITLE must name the release"
    assert isinstance(adapter.OFFICIAL_LISTS, bool), f"{name}: OFFICIAL_LISTS must be True or False"
    assert isinstance(adapter.OPTIONS, dict), f"{name}: OPTIONS must be a dict {{option: base.Option}}"
    for option, spec in adapter.OPTIONS.items():
        assert isinstance(spec, Option), f"{name}: OPTIONS[{option!r}] is {spec!r}, not a base.Option"
        assert isinstance(spec.values, tuple) and spec.values, f"{name}: OPTIONS[{option!r}] has no values"
        assert isinstance(spec.help, str) and spec.help.strip(), f"{name}: OPTIONS[{option!r}] has no help"
    if adapter.SAMPLE is not None:
        folder, table = adapter.SAMPLE
        assert Path(folder).is_dir() and Path(table).is_file(), \
            f"{name}: SAMPLE {adapter.SAMPLE} must be (an existing folder, an existing label table) or None"
    # read(data_dir, labels=None, uncertain="ignore", laterals=False, **options): the builder passes
    # these by keyword, each option of OPTIONS with its first value as the default
    parameters = inspect.signature(adapter.read).parameters
    expected = {"labels": None, "uncertain": "ignore", "laterals": False,
                **{option: spec.values[0] for option, spec in adapter.OPTIONS.items()}}
    assert list(parameters)[0] == "data_dir", f"{name}: read's first parameter must be data_dir"
    declared = {key: p.default for key, p in parameters.items() if key != "data_dir"}
    assert declared == expected, (f"{name}: read's keyword parameters and defaults are {declared}; the interface "
                                  f"(base.py) and its OPTIONS (first value the default) say {expected}")


def test_every_writer_is_a_registered_dataset():
    stale = sorted(set(releases.RELEASES) - set(datasets.DATASETS))
    assert not stale, f"tests/releases.py RELEASES has writers for {stale}, which DATASETS does not register"


@pytest.mark.parametrize("name", NAMES)
def test_adapter_recognises_its_release_and_no_other_adapter_claims_it(name, release_of, tmp_path):
    folder = release_of(name)
    adapter = datasets.get(name)
    what = adapter.looks_like(folder)
    assert isinstance(what, str) and what, f"{name}: looks_like({folder}) returned {what!r} for its own release"
    found = datasets.recognise(folder)
    assert found == {name: what}, (f"the {name} release is recognised as {sorted(found)}: only {name!r} may claim "
                                   "it, or the builder cannot say which --dataset a folder is")
    assert adapter.looks_like(tmp_path) is None, f"{name}: looks_like of an empty folder must be None"


@pytest.mark.parametrize("name", NAMES)
def test_adapter_reads_its_release_into_its_findings_column(name, release_of):
    adapter = datasets.get(name)
    column = harmonise.table()[1].get(name)
    assert column is not None, (f"cxr_tf/resources/findings.csv has no column {name!r}: add it, with the "
                                "release's own name of each finding it labels")
    folder = release_of(name)
    reads = [({}, adapter.read(folder))]
    reads += [({option: value}, adapter.read(folder, **{option: value}))
              for option, spec in adapter.OPTIONS.items() for value in spec.values]
    if adapter.SAMPLE is not None:
        sample_dir, sample_table = adapter.SAMPLE
        reads.append(({"SAMPLE": True}, adapter.read(sample_dir, labels=sample_table)))
    for how, release in reads:
        where = f"{name} read {how or 'with defaults'}"
        assert isinstance(release, Release), f"{where}: returned {type(release).__name__}, not a base.Release"
        assert release.dataset == name, f"{where}: Release.dataset is {release.dataset!r}"
        unmapped = [label for label in release.labels if label not in column]
        assert release.labels and not unmapped, \
            f"{where}: labels {unmapped or '(none)'} are not in findings.csv's {name!r} column {sorted(column)}"
        table = release.table
        assert len(table) > 0, f"{where}: no films"
        for key in ("image_index", "path"):
            twice = table[key][table[key].astype(str).duplicated()].astype(str).tolist()
            assert not twice, f"{where}: films listed twice (by {key}): {twice[:3]}"
        patients = table["patient_id"]
        blank = table["image_index"][~patients.map(lambda p: isinstance(p, str) and bool(p.strip()))].tolist()
        assert not blank, f"{where}: films without one patient id (a non-blank str): {blank[:3]}"
        missing = [str(p) for p in table["path"] if not Path(p).is_file()]
        assert not missing, f"{where}: films not on disk: {missing[:3]}"
        values = table[list(release.labels)].to_numpy(np.float64)
        odd = sorted({v for v in values.ravel().tolist() if not (math.isnan(v) or v in (0.0, 1.0))})
        assert not odd, f"{where}: label values {odd}; a Release holds 1.0, 0.0 or NaN"
        assert set(table["sex"]) <= set(SEXES), f"{where}: sex values {sorted(set(table['sex']))}"
        assert set(table["view"]) <= {*FRONTAL, ""}, f"{where}: views {sorted(set(table['view']))} without --laterals"
        assert set(table["split"]) <= set(SPLITS), f"{where}: splits {sorted(set(table['split']), key=str)}"


@pytest.mark.parametrize("name, option", OPTIONS)
def test_adapter_refuses_a_value_its_option_does_not_declare(name, option, release_of):
    with pytest.raises(ValueError, match=option):
        datasets.get(name).read(release_of(name), **{option: "no-such-value"})


@pytest.mark.parametrize("name", NAMES)
def test_adapter_has_a_page(name):
    page = DOCS / f"{name}.md"
    assert page.is_file(), f"docs/datasets/{name}.md is missing: where to get the release, its licence, what is read"
    heading = page.read_text(encoding="utf-8").splitlines()[0]
    title = datasets.get(name).TITLE
    assert heading.startswith("# ") and title in heading, f"{page}: first line {heading!r} must be '# {title} ...'"


@pytest.fixture(scope="module")
def gate():
    from cxr_tf.inference.gate import Gate

    return Gate()


@pytest.mark.parametrize("name", NAMES)
def test_the_input_gate_passes_the_frontal_films_of_the_release(name, release_of, gate):
    """The release's frontal films, read as predict reads them, pass the input gate: it never saw
    them (docs/gate.md: the fixtures are written from its held-out rows), and a release whose films
    decode to noise (a 16-bit overflow in a fixture, once) fails here."""
    from cxr_tf.inference.readers import FilmError, read_film

    films = {}
    for path in datasets.get(name).read(release_of(name)).table["path"]:
        try:
            films[str(path)] = read_film(path).pixels
        except FilmError:  # the fixtures' deliberately undecodable films (VinDr's JPEG Lossless one)
            continue
    refused = [(n, s.reason) for n, s in zip(films, gate.screen(list(films.values()))) if not s.passed]
    assert len(films) >= 20 and len(refused) <= 0.01 * len(films), refused
