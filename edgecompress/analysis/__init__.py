"""Model metrics, functional comparison and reports."""

from edgecompress.analysis.metrics import agreement, count_macs, count_params, file_bytes

__all__ = ["agreement", "count_macs", "count_params", "file_bytes"]
