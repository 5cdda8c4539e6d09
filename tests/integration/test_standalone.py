"""The repository stands alone: a copy of its tracked files in an empty folder collects every
test and builds the embedded sample, and no tracked file points outside the repository."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"\.\./shared|/shared/(data|seeds)")


def tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: nothing to compare against")
    return [REPO / name for name in out.decode().split("\0") if name]


def test_no_tracked_file_points_outside_the_repository():
    offenders = []
    for path in tracked_files():
        if path.suffix in (".png", ".gz", ".tfrecord") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{path.relative_to(REPO)}:{i}" for i, line in enumerate(text.splitlines(), 1)
                      if OUTSIDE.search(line) and path.name != "test_standalone.py"]
    assert not offenders, offenders


def test_a_copy_with_nothing_beside_it_collects_and_builds(tmp_path):
    clone = tmp_path / "alone" / "cxr_tf_clone"
    for path in tracked_files():
        target = clone / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    env = {**os.environ, "PYTHONPATH": str(clone)}
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                               cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-2000:]
    count = int(re.search(r"(\d+) tests? collected", collected.stdout).group(1))
    assert count > 150 and "error" not in collected.stdout.lower().split("collected")[-1]
    built = subprocess.run([sys.executable, "-m", "cxr_tf.build", "--image-size", "32", "--workers", "1",
                            "--no-progress"], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    assert (clone / "records" / "manifest.json").is_file()
