"""Thin Prefect flows over ``ppf`` functions; each DVC stage runs one (``python -m flows.<stage>``).

Importing this package pins Prefect's state inside the project BEFORE prefect itself is imported
(its settings are read at import): PREFECT_HOME=<project>/.prefect holds the temporary server's
database and the persisted task results that make reruns resume from cache.
"""

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PREFECT_HOME", str(_ROOT / ".prefect"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_UI_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline: no telemetry calls
