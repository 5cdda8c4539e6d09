"""One vocabulary of findings across datasets: ``cxr_tf/resources/findings.csv`` maps each
release's own finding names to a common name (NIH's ``Effusion`` = CheXpert's ``Pleural
Effusion`` = PadChest's ``pleural effusion`` = VinDr-CXR's ``Pleural effusion``).

The table has one row per common finding (column ``finding``; NIH's 14 keep NIH's
spelling, so NIH records and runs read the same before and after harmonisation) and one
column per dataset holding that release's name for it, blank where the release does not
label it. A release label maps to at most one common finding and back; release findings
without a row are not built into records (docs/datasets.md lists them).

A records folder keeps its release's own names (manifest ``labels``) and the mapping used
(manifest ``harmonised``: {own name: common name}); a run's labels are common names. A
manifest without ``harmonised`` (NIH records built before it existed) maps every label
to itself.
"""

import csv
from functools import lru_cache
from importlib import resources

from cxr_tf.data.labels import check_findings

RESOURCE = "findings.csv"


@lru_cache(maxsize=1)
def table():
    """(findings, {dataset: {own name: common name}}): the common names in table order
    and each dataset's mapping. ValueError naming the row for a repeated name."""
    with resources.files("cxr_tf").joinpath("resources", RESOURCE).open("r", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    datasets = [c for c in rows[0] if c not in ("finding", "note")]
    findings, mappings = [], {d: {} for d in datasets}
    for line, row in enumerate(rows, start=2):
        name = row["finding"].strip()
        if not name or name in findings:
            raise ValueError(f"{RESOURCE}: line {line}: finding {name!r} is empty or repeated")
        findings.append(name)
        for dataset in datasets:
            own = (row[dataset] or "").strip()
            if own:
                if own in mappings[dataset]:
                    raise ValueError(f"{RESOURCE}: line {line}: {dataset} label {own!r} maps to two findings")
                mappings[dataset][own] = name
    return tuple(findings), mappings


def vocabulary():
    """The common finding names, in the table's order (the order of a merged label set)."""
    return table()[0]


def release_labels(dataset):
    """The release's own names of the findings the table maps, in the table's order."""
    return tuple(table()[1][dataset])


def mapping(dataset, labels):
    """{own name: common name} for the release labels ``labels`` of ``dataset``."""
    known = table()[1][dataset]
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise ValueError(f"{dataset} labels {unknown} have no row in {RESOURCE}")
    return {label: known[label] for label in labels}


def common_labels(manifest):
    """The common names of a records folder's labels (its ``Manifest``; manifest order)."""
    return tuple(manifest.harmonised.get(label, label) for label in manifest.labels)


def merged_labels(manifests, findings=None):
    """The label set of a run trained on several records folders (their ``Manifest``s):
    ``findings`` (common names, each labelled by at least one of them) in the order given,
    else the union of their common names in vocabulary order. ValueError naming what no
    folder labels."""
    union = set().union(*(common_labels(m) for m in manifests))
    if findings is not None:
        return check_findings(findings, sorted(union), "at least one records folder")
    order = {name: i for i, name in enumerate(vocabulary())}
    return tuple(sorted(union, key=lambda name: (order.get(name, len(order)), name)))


def label_columns(manifest, labels):
    """For each name of ``labels`` (common names), the index of the records folder's label
    that maps to it, or -1 where the folder does not label it (its value is then missing)."""
    position = {name: i for i, name in enumerate(common_labels(manifest))}
    return [position.get(name, -1) for name in labels]
