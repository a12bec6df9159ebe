"""`grow_` and `GrowthSchedule`: widen a model in place during training, optimizer state carried along."""

from .operator import INITS, GrowReport, grow_
from .schedule import GrowthSchedule

__all__ = ["grow_", "GrowReport", "GrowthSchedule", "INITS"]
