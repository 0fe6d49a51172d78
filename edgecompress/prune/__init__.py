"""Structured (filter) pruning: channels are physically removed from the weights."""

from edgecompress.prune.importance import IMPORTANCES, FPGMImportance, NormImportance, RandomImportance
from edgecompress.prune.structured import PruneConfig, prune_

__all__ = ["PruneConfig", "prune_", "IMPORTANCES", "FPGMImportance", "NormImportance", "RandomImportance"]
