"""The workdir's files: written whole, readable by whoever the umask lets read them, no leftovers from kills."""

import os
import subprocess
import sys
import time

import pyarrow as pa

from vaepipe.store import Workdir, write_json, write_parquet


def test_written_files_honour_the_umask(tmp_path):
    # In a child process: the umask is per process, and FILE_MODE is read once at import.
    code = ("import pyarrow as pa; from pathlib import Path; from vaepipe.store import write_json, write_parquet; "
            f"write_json({{'a': 1}}, Path({str(tmp_path / 'a.json')!r})); "
            f"write_parquet(pa.table({{'x': [1]}}), Path({str(tmp_path / 'a.parquet')!r}))")
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        subprocess.run([sys.executable, "-c", f"import os; os.umask({umask}); " + code], check=True)
        for name in ("a.json", "a.parquet"):
            assert (tmp_path / name).stat().st_mode & 0o777 == mode, (name, oct(umask))


def test_temporaries_left_by_a_killed_run_are_removed_when_a_build_starts(tmp_path):
    wd = Workdir(tmp_path / "wd")
    write_json({"a": 1}, wd.root / "collection.json")
    write_parquet(pa.table({"x": [1]}), wd.root / "runs" / "r1" / "neighbours.parquet")
    stale = wd.root / "runs" / "r1" / ".neighbours.parquet.abc123.tmp"
    fresh = wd.root / "runs" / "r2" / ".neighbours.parquet.def456.tmp"  # a query writing right now
    for p in (stale, fresh):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half a file")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    with wd.lock():
        pass
    assert not stale.exists() and fresh.exists()
    assert (wd.root / "collection.json").exists() and (wd.root / "runs" / "r1" / "neighbours.parquet").exists()


def test_indexing_another_folder_into_a_workdir_is_refused_unless_asked(tmp_path):
    import pytest

    from vaepipe.errors import VaepipeError

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    wd = Workdir(tmp_path / "wd")
    assert wd.check_image_root(tmp_path / "b") is False  # no collection yet
    wd.write_collection(tmp_path / "a", "m1")
    assert wd.check_image_root(tmp_path / "a" / ".." / "a") is False  # the same folder, spelled otherwise
    with pytest.raises(VaepipeError, match="holds the collection of .*--replace"):
        wd.check_image_root(tmp_path / "b")
    assert wd.check_image_root(tmp_path / "b", replace=True) is True
    wd.collection.write_text("{half")  # damaged: rebuilt by the build, not a reason to refuse it
    assert wd.check_image_root(tmp_path / "b") is False


def test_a_full_disk_while_saving_a_model_says_so_and_leaves_the_earlier_file(tmp_path):
    """On a 128 KB filesystem a checkpoint does not fit: the error is ENOSPC ("No space left on device", which the
    CLI turns into one line), not torch's "file write failed", and the earlier checkpoint is still whole."""
    import errno

    import pytest

    from vaepipe.model import VAE, VAEConfig, save_checkpoint

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root: the full-disk path is not exercised on this machine")
    try:
        (small / "model.pt").write_bytes(b"the checkpoint saved before")
        with pytest.raises(OSError) as failure:
            save_checkpoint(VAE(VAEConfig(image_size=32, channels=3, width=32)), small / "model.pt")
        assert failure.value.errno == errno.ENOSPC
        assert (small / "model.pt").read_bytes() == b"the checkpoint saved before"
        assert [p.name for p in small.iterdir()] == ["model.pt"]  # no half-written temporary left
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_a_scratch_array_holds_its_data_in_a_file_the_process_need_not_hold(tmp_path):
    """What is written stays through release (the pages go back to the file, not away), the process's memory falls
    by what it released, nothing is left in the folder, and kept_rows moves the kept rows up in place."""
    import numpy as np

    from vaepipe.store import kept_rows, release, scratch_array

    folder = tmp_path / "cache"
    x = scratch_array((256, 64, 1024), np.float32, folder)  # 64 MB
    assert folder.is_dir() and list(folder.iterdir()) == []  # unlinked at once: a killed run leaves nothing
    data = np.random.default_rng(0).random((256, 64, 1024), dtype=np.float32)
    x[:] = data
    held = _rss_mb()
    release(x[:10])  # a view of it releases the whole mapping
    assert held - _rss_mb() > 48
    np.testing.assert_array_equal(x, data)
    keep = np.random.default_rng(1).random(256) < 0.5
    np.testing.assert_array_equal(kept_rows(x, keep, block=7), data[keep])
    release(np.zeros(3))  # an ordinary array: nothing to do


def test_gathering_rows_from_all_over_a_scratch_array_holds_the_rows_not_the_file(tmp_path):
    """2,048 rows of 4 KB picked from all over a 117 MB scratch array whose pages the kernel has cached (just
    written): the rows come back as indexing gives them, and the process holds about their size (indexing at once
    held 76 MB here: each page read maps its cached neighbours too)."""
    import numpy as np

    from vaepipe.store import gathered, release, scratch_array

    x = scratch_array((30_000, 2, 32, 32), np.float16, tmp_path)
    x[:] = np.arange(30_000, dtype=np.float16)[:, None, None, None]
    release(x)
    rows = np.random.default_rng(0).integers(0, len(x), 2048)
    before = _rss_mb()
    got = gathered(x[:, :1], rows)  # a view of one, as the warped checks read their grey planes
    assert _rss_mb() - before < 16  # the rows are 4 MB
    np.testing.assert_array_equal(got, x[:, :1][rows])
    release(x)
    np.testing.assert_array_equal(gathered(np.arange(10), np.array([3, 1])), [3, 1])  # an ordinary array


def test_a_scratch_array_that_cannot_have_a_file_is_held_in_memory_and_says_so(tmp_path, caplog):
    import numpy as np

    from vaepipe.store import release, scratch_array

    (tmp_path / "taken").write_text("a file where the folder would be")
    x = scratch_array((4, 3), np.float16, tmp_path / "taken")
    assert "held in memory instead of a file" in caplog.text
    x[:] = 1
    release(x)
    assert x.sum() == 12


def test_arrow_and_parquet_allocate_from_the_system_pool_unless_the_user_chose_one(tmp_path):
    """Importing vaepipe names the system allocator as Arrow's pool before pyarrow loads, so that Parquet's writing
    and reading use it too (they take the pool chosen at load, not pyarrow.set_memory_pool's; the wheels' mimalloc
    kept what they freed). A flow module loads pyarrow itself: the flows package imports vaepipe first.
    ARROW_DEFAULT_MEMORY_POOL in the environment stands."""
    code = ("import sys; __import__(sys.argv[1]); import numpy as np, pyarrow as pa, pyarrow.parquet as pq\n"
            "from vaepipe.store import write_parquet\n"
            f"write_parquet(pa.table({{'x': np.arange(100_000)}}), __import__('pathlib').Path({str(tmp_path)!r}) / 'x.parquet')\n"
            f"assert pq.read_table({str(tmp_path / 'x.parquet')!r})['x'].to_numpy()[-1] == 99_999\n"
            "print(pa.default_memory_pool().backend_name, *(n for n in ('system', 'mimalloc', 'jemalloc')"
            " if getattr(pa, n + '_memory_pool')().max_memory() > 0))")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}

    def used(first: str, **extra: str) -> str:
        return subprocess.run([sys.executable, "-c", code, first], env={**env, **extra}, capture_output=True,
                              text=True, check=True).stdout.strip()

    assert used("vaepipe.store") == "system system"
    assert used("flows.bulk_query") == "system system"  # pyarrow.parquet is its first import
    assert used("vaepipe.store", ARROW_DEFAULT_MEMORY_POOL="jemalloc") == "jemalloc jemalloc"


def test_trim_heap_gives_the_freed_heap_back():
    """Arrays freed from the C heap between live blocks (what a run's many block-sized arrays leave: glibc serves
    them from its heap once its mmap threshold has risen) stay with the process until trim_heap gives their pages
    back. In a fresh process: the test runner's own heap would blur the figure."""
    code = """if True:
        import ctypes, numpy as np
        from vaepipe.store import trim_heap
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
        blocks, pins = [], []
        for _ in range(2000):  # below glibc's mmap threshold: from the heap, each with a small live block after it
            blocks.append(np.ones(96 << 10, np.uint8))
            pins.append(ctypes.create_string_buffer(8 << 10))
        del blocks  # holes between live blocks, not the heap's top: kept
        before = rss()
        trim_heap()
        print(before, rss())
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after = map(int, out.split())
    assert before - after > 150, (before, after)
