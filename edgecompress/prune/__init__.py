"""Structured (filter) and unstructured pruning.

Structured pruning physically removes channels of coupled layer groups (``prune_``); its plan can
rebuild the pruned architecture from fresh model code (``apply_plan``). Unstructured pruning keeps
shapes and zeroes individual weights under fixed masks (``edgecompress.prune.unstructured``). Block
pruning removes whole residual blocks (``drop_blocks``): fewer layers, for runtimes whose cost is per layer.
"""

from edgecompress.prune.blocks import apply_dropped_blocks, drop_blocks, removable_blocks
from edgecompress.prune.importance import (
    IMPORTANCES,
    FPGMImportance,
    Importance,
    NormImportance,
    RandomImportance,
    SquaredNormImportance,
)
from edgecompress.prune.legr import adaptive_bn_fitness
from edgecompress.prune.structured import LegrConfig, PruneConfig, apply_plan, load_plan, prune_, save_plan

__all__ = ["PruneConfig", "LegrConfig", "prune_", "apply_plan", "save_plan", "load_plan", "adaptive_bn_fitness",
           "IMPORTANCES", "Importance", "FPGMImportance", "NormImportance", "SquaredNormImportance",
           "RandomImportance", "drop_blocks", "apply_dropped_blocks", "removable_blocks"]
