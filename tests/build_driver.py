"""Run the build-index flow in its own process, so a test can SIGKILL it mid-stage.

    python tests/build_driver.py IMAGES WORKDIR

Small parts and frequent ingest checkpoints, so every stage leaves partial work to resume from.
"""

import sys

import flows  # noqa: F401  (Prefect settings before prefect is imported)
from flows.build_index import build_index
from vaepipe.config import BuildConfig, EmbedConfig, IngestConfig, TrainConfig

CONFIG = BuildConfig(
    ingest=IngestConfig(workers=1, checkpoint_every=50),
    train=TrainConfig(epochs=3, batch_size=32, seed=0, checkpoint_minutes=0),  # state saved after every epoch
    embed=EmbedConfig(workers=0, part_rows=64, batch_size=32),
)

if __name__ == "__main__":
    summary = build_index(sys.argv[1], sys.argv[2], config=CONFIG)
    print("MODEL_ID", summary["model id"], flush=True)
