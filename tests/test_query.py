"""Bulk queries (every image against the rest, a list of collection paths, a folder of outside images) and search
as data (search_collection, search_files), on one real model and index."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vaepipe.query import find_duplicates, query_all, query_folder, query_list, search_collection, search_files
from vaepipe.errors import VaepipeError
from vaepipe.store import NEIGHBOURS_SCHEMA

from helpers import SERIAL


def _check_table(result, k):
    table = pq.read_table(result.neighbours)
    assert table.schema.equals(NEIGHBOURS_SCHEMA)
    meta = table.schema.metadata
    assert meta[b"vaepipe.run_id"].decode() == result.run_dir.name and b"vaepipe.image_root" in meta
    assert set(table["run_id"].to_pylist()) == {result.run_dir.name}
    assert set(table["model_id"].to_pylist()) == {meta[b"vaepipe.model_id"].decode()}
    df = table.to_pandas()
    assert len(df) == result.n_rows == result.n_queries * k
    for _, group in df.groupby("query_path"):
        assert list(group["rank"]) == list(range(1, k + 1))
        assert np.all(np.diff(group["similarity"].to_numpy()) <= 1e-6)
    return df


def test_all_against_all_excludes_self(built_copy):
    n = json.loads((built_copy.index_dir(json.loads(built_copy.collection.read_text())["model_id"]) / "index.json").read_text())["n"]
    result = query_all(built_copy, k=5)
    df = _check_table(result, 5)
    assert result.n_queries == n
    assert not (df["query_path"] == df["neighbour_path"]).any()
    # neighbours share the query's class (class = folder) far above chance (0.1): the embedding means something
    same = (df["query_path"].str.split("/").str[0] == df["neighbour_path"].str.split("/").str[0]).mean()
    assert same > 0.3
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["kind"] == "all" and run["k"] == 5 and run["n_rows"] == len(df)


def test_nearest_neighbour_of_a_copy_is_its_original(built_copy, fmnist_dir, tmp_path):
    originals = sorted(fmnist_dir.rglob("*.png"))[::97][:5]
    qdir = tmp_path / "queries"
    qdir.mkdir()
    expect = {}
    for i, src in enumerate(originals):
        img = Image.open(src)
        if i % 2:
            img.convert("RGB").save(qdir / f"q{i}.jpg", quality=92)  # re-encoded as colour JPEG
            expect[f"q{i}.jpg"] = src
        else:
            img.resize((84, 84), Image.Resampling.BICUBIC).save(qdir / f"q{i}.png")  # upscaled 3x
            expect[f"q{i}.png"] = src
    (qdir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    # Query inputs get the collection's treatment: a FIFO (it would block a reader forever) and a symlink loop are
    # skipped with their reasons; a name that is not UTF-8 is a query like any other.
    os.mkfifo(qdir / "pipe.png")
    os.symlink("loop.png", qdir / "loop.png")
    shutil.copyfile(originals[0], os.path.join(os.fsencode(qdir), b"caf\xe9.png"))
    expect["caf\\xe9.png"] = originals[0]
    result = query_folder(built_copy, qdir, k=3, cfg=SERIAL)
    df = _check_table(result, 3)
    top = df[df["rank"] == 1].set_index("query_path")["neighbour_path"].to_dict()
    assert top == {q: src.relative_to(fmnist_dir).as_posix() for q, src in expect.items()}
    reasons = dict(result.skipped)
    assert sorted(reasons) == ["broken.png", "loop.png", "pipe.png"], reasons
    assert reasons["loop.png"].startswith("symlink loop") and reasons["pipe.png"].startswith("empty file")


def test_list_query_uses_collection_paths_and_refuses_others(built_copy, tmp_path, caplog):
    listing = tmp_path / "list.txt"
    collection = json.loads(built_copy.collection.read_text())
    paths = pq.read_table(built_copy.index_dir(collection["model_id"]) / "ids.parquet")["path"].to_pylist()
    inside = f"{collection['image_root']}/{paths[20]}"  # absolute, inside the collection: as `sample --between` takes
    missing = "".join(f"gone/{i}.png\n" for i in range(30))
    listing.write_bytes(f"# my picks\n{paths[3]}\n{paths[10]}\n../../etc/passwd\n/abs/x.png\nno/such.png\n{inside}\n"
                        f"{missing}".encode() + b"caf\xe9.png\n")
    with caplog.at_level("WARNING", logger="vaepipe"):
        result = query_list(built_copy, listing, k=4)
    df = _check_table(result, 4)
    assert set(df["query_path"]) == {paths[3], paths[10], paths[20]}
    assert not (df["query_path"] == df["neighbour_path"]).any()
    reasons = dict(result.skipped)
    assert "refused" in reasons["../../etc/passwd"] and "refused" in reasons["/abs/x.png"]
    assert "not in the index" in reasons["no/such.png"] and reasons["line 38"] == "not valid UTF-8"
    assert len(result.skipped) == 34 and caplog.text.count("query: skipped") == 11  # 10 shown, then one line


@pytest.mark.parametrize("k", [0, -1, 10_000])
def test_bad_k_is_a_clear_error(built_copy, k):
    with pytest.raises(VaepipeError, match="k"):
        query_all(built_copy, k=k)
    assert not (built_copy.root / "runs").exists()


def test_query_without_a_built_collection_says_what_to_do(tmp_path):
    from vaepipe.store import Workdir
    with pytest.raises(VaepipeError, match="vaepipe index"):
        query_all(Workdir(tmp_path), k=3)


def test_a_run_that_fails_leaves_no_run_folder_that_looks_finished(built_copy, monkeypatch):
    """The disk fills while the report is written (simulated): the run folder appears whole or not at all."""
    import errno

    import vaepipe.query

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vaepipe.query, "write_query_report", disk_full)
    runs = built_copy.root / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    with pytest.raises(OSError, match="No space left"):
        query_all(built_copy, k=3, duplicates=False)
    new = set(runs.iterdir()) - before
    assert new and all(p.name.startswith(".") and p.name.endswith(".partial") for p in new)
    old = 1.0  # as if an hour ago and more: the next build deletes it
    for p in new:
        os.utime(p, (old, old))
    with built_copy.lock():
        pass
    assert not any(p.exists() for p in new)


def test_search_as_data_gives_the_bulk_job_s_rows_and_writes_nothing(built_copy, fmnist_dir, tmp_path):
    before = sorted(p.relative_to(built_copy.root) for p in built_copy.root.rglob("*"))
    every = search_collection(built_copy, k=4)
    assert every.table.schema.equals(NEIGHBOURS_SCHEMA) and not every.skipped
    df = every.to_pandas()
    assert set(df["run_id"]) == {""}
    assert sorted(p.relative_to(built_copy.root) for p in built_copy.root.rglob("*")) == before  # nothing written
    bulk = pq.read_table(query_all(built_copy, k=4, duplicates=False).neighbours).to_pandas()
    cols = ["query_path", "rank", "neighbour_path"]
    assert df[cols].equals(bulk[cols]) and np.allclose(df["similarity"], bulk["similarity"])

    paths = sorted(df["query_path"].unique())[:3]
    some = search_collection(built_copy, paths + ["not/there.png", "../escape.png"], k=2)
    assert sorted(some.to_pandas()["query_path"].unique()) == paths
    assert [reason.split(" ")[0] for _, reason in some.skipped] == ["not", "refused:"]

    # Outside files: one path, a list (each named as given, an unreadable one skipped), a folder.
    src = fmnist_dir / paths[0]
    outside = tmp_path / "outside"
    outside.mkdir()
    copy = outside / "copy.jpg"
    Image.open(src).convert("RGB").save(copy, quality=90)
    one = search_files(built_copy, copy, k=3).to_pandas()
    assert list(one["query_path"]) == [str(copy)] * 3 and one["neighbour_path"].iloc[0] == paths[0]
    (outside / "broken.png").write_bytes(b"not a picture")
    listed = search_files(built_copy, [copy, outside / "broken.png", outside / "missing.png"], k=1)
    assert listed.to_pandas()["query_path"].tolist() == [str(copy)]
    assert [name for name, _ in listed.skipped] == [str(outside / "broken.png"), str(outside / "missing.png")]
    folder = search_files(built_copy, outside, k=1).to_pandas()
    assert folder["query_path"].tolist() == ["copy.jpg"]  # broken.png: skipped
    with pytest.raises(VaepipeError, match="no query image could be read"):
        search_files(built_copy, [outside / "broken.png"])


def test_the_cli_looks_one_image_up_without_a_run(built_copy, fmnist_dir, tmp_path):
    src = sorted(fmnist_dir.rglob("*.png"))[7]
    copy = tmp_path / "copy.png"
    Image.open(src).resize((56, 56)).save(copy)
    done = subprocess.run([sys.executable, "-m", "flows.cli", "query", str(built_copy.root), "--image", str(copy),
                           "--image", str(tmp_path / "gone.png"), "-k", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == str(copy) and len(lines) == 3
    assert lines[1].split()[0] == "1" and lines[1].split()[2] == src.relative_to(fmnist_dir).as_posix()
    assert "skipped " + str(tmp_path / "gone.png") in done.stderr
    assert not built_copy.root.joinpath("runs").exists() or not any(built_copy.root.joinpath("runs").iterdir())


def test_duplicate_groups_as_data_are_the_bulk_job_s(built_copy):
    groups = find_duplicates(built_copy)
    run = query_all(built_copy, k=2)
    assert groups.equals(pq.read_table(run.duplicates))  # the same threshold and the same groups
    loose = find_duplicates(built_copy, threshold=0.5)
    assert loose.num_rows > groups.num_rows  # a lower cut groups more images
    with pytest.raises(VaepipeError, match="threshold"):
        find_duplicates(built_copy, threshold=2.0)
