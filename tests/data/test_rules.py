"""The rules for what may be asked of records, each in one place and used by every command:
a chosen label set (``check_findings``), the folders' proportions (``check_ratio``) and the
film size (``check_image_size``)."""

import pytest

from cxr_tf.data import builder
from cxr_tf.data.labels import LABELS, check_findings
from cxr_tf.data.sources import check_image_size, check_ratio
from cxr_tf.training import config as config_lib


def test_a_chosen_label_set():
    assert check_findings(["Mass", "Effusion"], LABELS) == ("Mass", "Effusion")  # the order given
    assert check_findings("Mass, Effusion") == ("Mass", "Effusion")  # the command line's form
    with pytest.raises(ValueError, match=r"none labels Hernia2"):
        check_findings(["Effusion", "Hernia2"], LABELS, "the NIH ChestX-ray14 release")
    for bad in ([], ["Mass", "Mass"], "", [3]):
        with pytest.raises(ValueError, match="give one or more distinct finding names"):
            check_findings(bad, LABELS)
    # the builder and the config apply it
    with pytest.raises(ValueError, match=r"labelled by the NIH ChestX-ray14 release .*none labels Lung Opacity"):
        builder.build_records(findings=["Effusion", "Lung Opacity"], out="unused", workers=0, progress=False)
    config = config_lib.load_config("simple_cnn")
    assert config_lib.validate({**config, "findings": "Mass,Effusion"})["findings"] == ["Mass", "Effusion"]
    with pytest.raises(config_lib.ConfigError, match=r"findings=\['Mass', 'Mass'\]: expected null or a list"):
        config_lib.validate({**config, "findings": ["Mass", "Mass"]})


def test_the_folders_proportions():
    assert check_ratio("2,1") == [2.0, 1.0] and check_ratio([0, 1], folders=2) == [0.0, 1.0]
    for bad, folders in (([0, 0], None), ([-1, 2], None), ("a,b", None), ([1, 1, 1], 2)):
        with pytest.raises(ValueError, match="give one non-negative proportion per records folder"):
            check_ratio(bad, folders)
    config = config_lib.load_config("simple_cnn")
    assert config_lib.validate({**config, "records_ratio": "1,3"})["records_ratio"] == [1.0, 3.0]
    with pytest.raises(config_lib.ConfigError, match=r"records_ratio=\[0, 0\]: give one non-negative"):
        config_lib.validate({**config, "records_ratio": [0, 0]})


def test_no_film_larger_than_the_records_store():
    check_image_size(64, 64, "records")
    with pytest.raises(ValueError, match="image_size=96 is larger than the 64 px stored in records: upsampling"):
        check_image_size(96, 64, "records")
