"""Damaged files of every format the product reads: each one ends as an ok or an error row, never as an
exception that stops the run (Pillow's plugins raise struct.error, TypeError, IndexError and more on bad bytes)."""

import random
from pathlib import Path


from helpers import FORMATS, format_sample, mutated
from vaepipe.config import IngestConfig
from vaepipe.images import ImageSpec, load_batch
from vaepipe.ingest import inspect_file

MUTATIONS_PER_FORMAT = 150


def test_damaged_files_of_every_format_end_as_ok_or_error(tmp_path: Path):
    rng = random.Random(0)
    config = IngestConfig()
    outcomes: dict[str, int] = {}
    for suffix, fmt in FORMATS.items():
        data = format_sample(fmt)
        for i in range(MUTATIONS_PER_FORMAT):
            path = tmp_path / f"{suffix}-{i:03d}.{suffix}"
            path.write_bytes(mutated(data, rng))
            row = inspect_file(tmp_path, str(path), config)
            assert row["status"] in ("ok", "error") and (row["status"] == "ok") == (row["error"] is None), row
            for spec in (ImageSpec(32, 3, 255, "trim"), ImageSpec(28, 1, 0, "letterbox")):
                batch, errors = load_batch([path], spec)
                assert batch.shape == (1, spec.channels, spec.size, spec.size)
                assert errors[0] == "" or (errors[0] and not batch.any()), errors
            outcomes[row["status"]] = outcomes.get(row["status"], 0) + 1
    assert outcomes.get("error", 0) > 0  # the mutations did damage files
