"""Regenerate the embedded sample ``cxr_tf/sample/`` from a full-size copy of its 150 real NIH
films (``--source``: the films and their ``Data_Entry_sample.csv``): each film downsampled to
128 px 8-bit greyscale PNG (``cxr_tf.data.images``: RGBA -> grey, area interpolation), their
150 table rows (2020 layout) as ``Data_Entry_sample.csv``, and the official NIH list files
cut down to these films (``train_val_list.txt``, ``test_list.txt``).

    python tools/make_sample.py --source /data/nih-sample --lists /data/nih

``--lists`` is the folder of NIH's ``train_val_list.txt`` and ``test_list.txt``. Both folders
lie outside the repository, so both are required.
"""

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxr_tf.data.datasets import nih  # noqa: E402
from cxr_tf.data.images import encode_png, read_image, to_square  # noqa: E402


def make_sample(source, lists, dest, size=128):
    """Write the sample into ``dest``; returns its total size in bytes."""
    table_path = Path(source) / "Data_Entry_sample.csv"
    table = nih.read_label_table(table_path)
    inventory = nih.match_files(table, source)
    if inventory.rows_without_files:
        raise FileNotFoundError(f"{len(inventory.rows_without_files)} sample films missing under {source}")
    images = Path(dest) / "images"
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    for name, path in zip(inventory.table["image_index"], inventory.table["path"]):
        (images / name).write_bytes(encode_png(to_square(read_image(path), size)))
    shutil.copyfile(table_path, Path(dest) / "Data_Entry_sample.csv")
    names = set(table["image_index"])
    for list_name in ("train_val_list.txt", "test_list.txt"):
        kept = [n for n in (Path(lists) / list_name).read_text().split() if n in names]
        (Path(dest) / list_name).write_text("".join(f"{n}\n" for n in kept))
    return sum(p.stat().st_size for p in Path(dest).rglob("*") if p.is_file())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True,
                        help="folder of the 150 full-size NIH films and Data_Entry_sample.csv")
    parser.add_argument("--lists", type=Path, required=True,
                        help="folder of the official list files (train_val_list.txt, test_list.txt)")
    parser.add_argument("--dest", type=Path, default=ROOT / "cxr_tf" / "sample")
    parser.add_argument("--size", type=int, default=128, help="side of the square films (pixels)")
    args = parser.parse_args(argv)
    total = make_sample(args.source, args.lists, args.dest, args.size)
    print(f"wrote {args.dest} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
