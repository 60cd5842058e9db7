"""Bulk queries: every image against the rest, a list of collection paths, a folder of outside images."""

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vaepipe.query import query_all, query_folder, query_list
from vaepipe.errors import VaepipeError
from vaepipe.store import NEIGHBOURS_SCHEMA

from conftest import SERIAL


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
