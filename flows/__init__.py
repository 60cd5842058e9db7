"""Prefect 3 flows over the vaepipe library. Thin: each task calls one library stage and passes paths on."""

import logging
import os

import vaepipe  # noqa: F401  first: it names Arrow's allocator, which is read once, when pyarrow loads

# Library progress is logged on the "vaepipe" logger; this makes Prefect show it in run logs too.
# Prefect reads these when it is first imported, which is why they are set here, before any flow module imports it.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "vaepipe")
# The temporary local server's telemetry heartbeat only adds noise (and SQLite lock warnings) to every run.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The first run with a new PREFECT_HOME creates the temporary server's database (every migration): 7-20 s on 2 cores,
# against Prefect's default wait of 20 s, after which the run fails ("Timed out while attempting to connect to
# ephemeral Prefect API server"). A healthy server that boots slowly is worth waiting for (the CLI's own temporary
# server stops waiting as soon as its process exits). A value the user sets is kept.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# Library stages also run outside flows (tests, benchmarks): their logs then stay local, without a warning.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
logging.getLogger("vaepipe").setLevel(logging.INFO)
