"""Exporters: every backend has a config, an ``export()`` that writes atomically, a runtime that
re-runs the artifact, and ``validate()`` against the PyTorch reference."""

from edgecompress.export.base import EXPORTERS, ExportConfig, Exporter, ValidationResult, get_exporter

__all__ = ["EXPORTERS", "ExportConfig", "Exporter", "ValidationResult", "get_exporter"]
