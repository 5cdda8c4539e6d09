"""Label tables the builder must refuse rather than half-read (issue 28): an open quote that
swallows rows, a line over the limit (a 1 GB line, never read whole), a gzip table that
inflates past the limit; and folder links that leave the data folder, not followed and
reported. Each input is generated here; each refusal names the file, the line and the cause."""

import gzip
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from cxr_tf.data.datasets import base, chexpert, nih, tables
from cxr_tf.data.datasets.base import TableError

SAMPLE = Path(__file__).resolve().parents[2] / "cxr_tf" / "sample"
TABLE = SAMPLE / "Data_Entry_sample.csv"
LINES = TABLE.read_bytes().splitlines(keepends=True)  # header + 150 rows


def test_an_open_quote_that_swallows_rows_stops_with_file_and_line(tmp_path):
    # a quote opened before line 11's labels and closed after line 81's: the fields still line
    # up, so pandas reads lines 11-81 as one row without a word (70 films lost to it)
    lines = list(LINES)
    lines[10] = lines[10].replace(b",", b',"', 1)
    fields = lines[80].split(b",")
    lines[80] = b",".join([fields[0], fields[1] + b'"', *fields[2:]])
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_bytes(b"".join(lines))
    with pytest.raises(TableError, match=rf"^{path}: line 11: column 1: a quoted field runs over 71 lines "
                                         r"\('.{60}\.\.\.'\): a quote left open swallows the rows after it"):
        nih.read_label_table(path)
    # the same defect in a table read by base.read_csv (CheXpert, MIMIC-CXR, PadChest, VinDr-CXR)
    table = tmp_path / "train.csv"
    rows = [f"CheXpert-v1.0/train/patient{k:05d}/study1/view1_frontal.jpg,Female,{40 + k},Frontal,PA" for k in range(9)]
    rows[3] = rows[3].replace(",Female", ',"Female')
    rows[6] = rows[6].replace(",Female,", ',Female",')
    table.write_text("Path,Sex,Age,Frontal/Lateral,AP/PA\n" + "\n".join(rows) + "\n")
    with pytest.raises(TableError, match=rf"^{table}: line 5: column 'Sex': a quoted field runs over 4 lines"):
        base.read_csv(table, chexpert.COLUMNS, "pass CheXpert's train.csv")


def test_a_one_gigabyte_line_is_refused_without_reading_it(tmp_path):
    """A sparse 1 GiB file: the header, one good row, then a line of 1 GiB. Read in a fresh
    process: refused naming line 3 with a short excerpt, peak memory growing by a few MB
    (before: 8.4 GB, and a 2 GB error message)."""
    path = tmp_path / "Data_Entry_2017.csv"
    with open(path, "wb") as file:
        file.write(b"".join(LINES[:2]) + b"00000001_000.png,")
        file.truncate(2**30)  # the rest reads as 0x00 bytes, with no line break
    script = ("import resource, sys\nfrom cxr_tf.data.datasets import nih\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "try:\n    nih.read_label_table(sys.argv[1])\nexcept ValueError as err:\n    print(err)\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True,
                         timeout=120).stdout.splitlines()
    assert out[0].startswith(f"{path}: line 3 is longer than 65,536 bytes, the line limit (tables.MAX_LINE_BYTES); "
                             "it starts '00000001_000.png,")
    assert len(out[0]) < 400
    assert int(out[1]) < 64 * 1024  # kB of peak memory added by reading the table


def test_a_gzip_table_inflating_past_the_limit_is_refused(tmp_path):
    # gzip members of 16 MiB of short rows each, concatenated: 1 MiB of file, 1.1 GiB of table
    member = gzip.compress(b"00000001_000.png,No Finding,0,1,50,M,PA\n" * (2**24 // 40), compresslevel=9)
    path = tmp_path / "Data_Entry_2017.csv.gz"
    path.write_bytes(gzip.compress(LINES[0]) + member * 70)
    with pytest.raises(TableError, match=rf"^{path}: more than 33,554,432 bytes once decompressed, over the "
                                         r"table-size limit \(tables.MAX_TABLE_BYTES\)"):
        tables.open_text(path, "pass the table", max_bytes=32 * 2**20)
    # a truncated member is a damaged download, said so
    path.write_bytes(member[:len(member) // 2])
    with pytest.raises(TableError, match="damaged gzip file"):
        tables.open_text(path, "pass the table")
    assert zlib.decompress(member, 31)[:16] == b"00000001_000.png"  # the members hold the rows themselves


def test_folder_links_leaving_the_data_folder_are_not_followed_and_reported(tmp_path):
    outside = tmp_path / "elsewhere" / "images"
    outside.mkdir(parents=True)
    names = [line.split(b",")[0].decode() for line in LINES[1:4]]
    for name in names:
        (outside / name).write_bytes((SAMPLE / "images" / name).read_bytes())
    data = tmp_path / "nih"
    (data / "images").mkdir(parents=True)
    (data / "images" / names[0]).write_bytes((SAMPLE / "images" / names[0]).read_bytes())
    (data / "Data_Entry_2017.csv").write_bytes(b"".join(LINES[:4]))
    os.symlink("..", data / "parent")  # the link that walked the parent folder
    os.symlink(outside, data / "more_images")
    os.symlink(data / "images", data / "images_again")  # a link that stays inside: followed
    release = nih.read(data)
    assert release.table["image_index"].tolist() == [names[0]]
    assert release.excluded == {base.LINK_OUTSIDE: ["more_images", "parent"]}
    assert release.rows_without_files == names[1:]
    found, links = base.find_files(data, (".png",))
    assert found == [str(data / "images" / names[0])] and links == [str(data / "more_images"), str(data / "parent")]
