"""The builder on Apache Beam (``cxr_tf.data.beam_build``, ``python -m cxr_tf.build --runner beam``)
against the local builder: on the embedded sample and on a VinDr-CXR release (DICOM films, one
that cannot be decoded, one file no table lists) the two write the same shards byte for byte and
the same manifest apart from how the build ran. Beam's in-process runner (FnApiRunner, one
worker) keeps this quick; tools/bench_beam.py runs the multi-process one."""

import json
import shutil
import sys

import pytest
import releases

from cxr_tf import build as build_command
from cxr_tf.data import beam_build, builder, manifest

pytestmark = pytest.mark.filterwarnings("ignore:split .* its AUC cannot be measured there:UserWarning")

QUIET = dict(log=lambda *_: None)


def folder_contents(folder):
    """{file name: bytes} of every shard and every ``.build`` record; the manifest without ``build``."""
    files = {p.relative_to(folder).as_posix(): p.read_bytes()
             for p in [*folder.glob("*.tfrecord"), *folder.glob(".build/*.json"), *folder.glob("*.txt")]}
    data = json.loads(manifest.path(folder).read_text())
    return files, {key: value for key, value in data.items() if key != "build"}


def assert_same_build(local, beam):
    local_files, local_manifest = folder_contents(local)
    beam_files, beam_manifest = folder_contents(beam)
    assert sorted(beam_files) == sorted(local_files)
    assert [name for name in local_files if beam_files[name] != local_files[name]] == []  # byte for byte
    assert beam_manifest == local_manifest
    assert not list(beam.glob("**/*.tmp")) and not list(beam.glob(".build/*.films.json"))


def test_beam_build_of_the_sample_equals_the_local_build(sample_records, tmp_path):
    out = tmp_path / "beam"
    records = beam_build.build_records(data_dir=None, out=out, image_size=64, seed=0, **QUIET)
    assert_same_build(sample_records, out)
    assert records.build["runner"] == "FnApiRunner" and records.build["encoded"] == 150
    assert manifest.read(out) == records
    assert sum(s.count for s in records.splits.values()) == 150


@pytest.fixture(scope="module")
def vindr_release(tmp_path_factory):
    return releases.write_vindr_release(tmp_path_factory.mktemp("vindr"))


def test_beam_build_of_a_dicom_release_equals_the_local_build_and_resumes_it(vindr_release, tmp_path):
    settings = builder.BuildSettings(dataset="vindr-cxr", data_dir=vindr_release, image_size=32,
                                     shard_size_mb=0.01)  # several shards per split
    local = builder.build_records(settings, out=tmp_path / "local", workers=0, progress=False, **QUIET)
    assert sum(len(s.shards) for s in local.splits.values()) >= 6
    assert local.skipped  # the release's undecodable DICOM and its film without a row, with reasons

    # the workers read the films from another place (--films-url): a copy of the release
    copy = shutil.copytree(vindr_release, tmp_path / "bucket")
    beam = beam_build.build_records(settings, out=tmp_path / "beam", films_url=str(copy), **QUIET)
    assert_same_build(tmp_path / "local", tmp_path / "beam")
    assert beam.skipped == local.skipped and beam.build["resumed_shards"] == 0

    # an interrupted local build (its last shard gone) is finished by the Beam builder, and back
    last = local.splits["test"].shards[-1]
    (tmp_path / "local" / last).unlink()
    (tmp_path / "local" / ".build" / f"{last}.json").unlink()
    resumed = beam_build.build_records(settings, out=tmp_path / "local", **QUIET)
    assert resumed.build["resumed_shards"] == sum(len(s.shards) for s in local.splits.values()) - 1
    assert_same_build(tmp_path / "beam", tmp_path / "local")


def test_the_command_builds_on_beam_and_refuses_what_beam_does_not_know(tmp_path, capsys):
    out = tmp_path / "records"
    assert build_command.main(["--runner", "beam", "--workers", "1", "--out", str(out), "--image-size", "16",
                               "--shard-size-mb", "0.001", "--no-progress"]) == 0
    assert manifest.read(out).build["runner"] == "FnApiRunner"
    assert "Beam FnApiRunner" in capsys.readouterr().out
    # an option Beam does not know is one line, exit 2, nothing built; Beam options need a Beam runner
    assert build_command.main(["--runner", "beam", "--out", str(tmp_path / "r"), "--no-such-option=1"]) == 2
    assert "unknown Beam pipeline option(s) --no-such-option" in capsys.readouterr().err
    assert build_command.main(["--runner", "Dataflow", "--out", str(tmp_path / "r")]) == 2
    assert "expected local, beam or a Beam runner" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_command.parse_args(["--project=p"])
    assert "need --runner beam" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_without_apache_beam_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # what an installation without the extra raises
    with pytest.raises(ImportError, match=r"pip install 'cxr_tf\[beam\]'"):
        beam_build.build_records(out="unused", **QUIET)
