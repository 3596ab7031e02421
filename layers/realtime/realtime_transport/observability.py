"""Logger and Metrics, made once for every function (service name and namespace from POWERTOOLS_* env)."""

from __future__ import annotations

import warnings

from aws_lambda_powertools import Logger, Metrics

logger = Logger()
metrics = Metrics()

# Routes such as ping add no metric; an empty flush is expected there, not a mistake.
warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)
