"""`deepen`: insert layers or blocks that start as exact identities (Net2DeeperNet)."""

from .inserts import Deepened, GatedBlock, ResidualInsert, fold_gates, set_gates_
from .operator import DeepenReport, Insertion, deepen

__all__ = ["deepen", "DeepenReport", "Insertion", "Deepened", "GatedBlock", "ResidualInsert", "fold_gates",
           "set_gates_"]
