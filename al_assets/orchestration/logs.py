"""What a run launched from the CLI prints: the assets' own log lines, one line each.

Dagster's console logger prints every event, and a failed step with its whole stack trace; the
CLI already reports a failure in one line that names the file and the fix (``runs._errors``),
so its runs use this logger instead. The instance's event log still keeps every event.
"""

from __future__ import annotations

import logging
import re
import sys

import dagster as dg

_SILENT_EVENTS = {"STEP_FAILURE", "PIPELINE_FAILURE"}  # PIPELINE_FAILURE: a run's failure


class _CliFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        step = meta.get("step_key") or meta.get("job_name") or "dagster"
        text = meta.get("orig_message") or record.getMessage()
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"  {self.formatTime(record, '%H:%M:%S')} {step}: {level}{text}"


_SKIPPED = re.compile(r"^Dependencies for step \S+ .*Not executing\.$", re.DOTALL)
"""Dagster's line per step skipped after a failure: a consequence of the failure reported."""


class _DropFailures(logging.Filter):
    """Failures are the CLI's to report (one line); their records carry the stack trace, and
    the steps skipped because of them add one error line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        if event is not None and event.event_type_value in _SILENT_EVENTS:
            return False
        return not _SKIPPED.match(str(meta.get("orig_message") or record.getMessage()))


@dg.logger({"log_level": dg.Field(str, is_required=False, default_value="INFO")},
           description="One line per asset log message; failures left to the CLI.")
def cli_console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    level = logging.getLevelName(init_context.logger_config["log_level"].upper())
    logger = logging.Logger("al_assets.cli", level=level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CliFormatter())
    handler.addFilter(_DropFailures())
    logger.addHandler(handler)
    return logger
