"""Real image files, a real trained model and one Prefect test server for the whole session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers import FAST_TRAIN, SERIAL, write_fmnist
from vaepipe.build import build
from vaepipe.config import BuildConfig, IngestConfig
from vaepipe.store import Workdir


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fmnist")
    write_fmnist(folder)
    return folder


@pytest.fixture(scope="session")
def built(fmnist_dir, tmp_path_factory) -> Workdir:
    """A workdir with every stage run by the library on real Fashion-MNIST PNGs (read-only for tests)."""
    wd = Workdir(tmp_path_factory.mktemp("built"))
    build(fmnist_dir, wd, BuildConfig(ingest=IngestConfig(workers=1), train=FAST_TRAIN, embed=SERIAL))
    return wd


@pytest.fixture
def built_copy(built, tmp_path) -> Workdir:
    """A private copy of `built` for tests that write into the workdir."""
    shutil.copytree(built.root, tmp_path / "wd")
    return Workdir(tmp_path / "wd")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One temporary Prefect server (SQLite, own PREFECT_HOME) for every flow test; its API URL."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    import flows  # noqa: F401  (logging and analytics settings before prefect is imported)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_URL

        yield PREFECT_API_URL.value()  # a real server: CLI subprocesses given it skip starting their own


def pytest_collection_modifyitems(items):
    """A test that runs Prefect flows is an integration test: `make test-fast` leaves it out."""
    for item in items:
        if "prefect_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
