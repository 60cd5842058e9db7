"""Prefect 3 flows over the vaepipe library. Thin: each task calls one library stage and passes paths on."""

import logging
import os

# Library progress is logged on the "vaepipe" logger; this makes Prefect show it in run logs too.
# Prefect reads these when it is first imported, which is why they are set here, before any flow module imports it.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "vaepipe")
# The temporary local server's telemetry heartbeat only adds noise (and SQLite lock warnings) to every run.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Library stages also run outside flows (tests, benchmarks): their logs then stay local, without a warning.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
logging.getLogger("vaepipe").setLevel(logging.INFO)
