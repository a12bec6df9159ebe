"""netgraft: grow trained PyTorch models exactly.

Public API:
    widen(model, widths, *, example_inputs, noise=0.0, seed=None) -> wider copy computing the same function
    deepen(model, after, *, example_inputs, data=None, kind="auto") -> deeper copy computing the same function
    set_gates_ / fold_gates -> ramp in, then remove, the gates of inserted post-norm blocks
    grow_(model, widths, optimizer=, init="gradmax") -> the same model, grown in place during training
    GrowthSchedule(model, targets, every=, times=) -> grow from inside a training loop
    inject_(source, target) -> InjectionReport: data-free transfer into a different architecture, in place (TLI)
    similarity(source, target) -> float in [0, 1]: how much of target the source can seed
    groups(model, example_inputs) -> table of coupled dimensions
    upcycle(model, num_experts=E, top_k=k, granularity=1) -> mixture-of-experts copy computing the same function
    grow_checkpoint(src_dir, out_dir, ConfigSizes(...)) -> grow a Hugging Face checkpoint directory in bounded memory
    upcycle_checkpoint(src_dir, out_dir, num_experts=E, top_k=k) -> upcycle a checkpoint directory in bounded memory
    check_preserved(a, b, example_inputs) -> Certificate (max output difference)
    register_op / register_layer / RuleContext -> extension point: how custom ops and layers couple their axes
    LayerKind / register_kind -> extension point: the rest netgraft knows about a layer type (deepen, grow_, inject)
    unregister_op / unregister_layer / unregister_kind -> undo a registration (the rule it replaced applies again)
"""

from . import rules  # noqa: F401 - registers the built-in coupling rules
from .core.certify import Certificate, check_preserved
from .core.coupling import Group, GroupTable, groups
from .core.layers import LayerKind, TracedLayer, register_kind, unregister_kind
from .core.registry import RuleContext, register_layer, register_op, unregister_layer, unregister_op
from .errors import InvalidRequestError, NetgraftError, NotPreservedError, UnknownNameError, UnsupportedModelError
from .hf.request import ConfigSizes
from .hf.stream import grow_checkpoint, upcycle_checkpoint
from .ops.deepen import Deepened, DeepenReport, GatedBlock, Insertion, ResidualInsert, deepen, fold_gates, set_gates_
from .ops.grow import GrowReport, GrowthSchedule, grow_
from .ops.inject import SIMILARITY_THRESHOLD, InjectionReport, inject, inject_, similarity
from .ops.upcycle import MoE, UpcycleReport, upcycle
from .ops.widen import WidenReport, widen

__version__ = "0.1.0"

__all__ = [
    "Certificate",
    "MoE",
    "UpcycleReport",
    "upcycle",
    "upcycle_checkpoint",
    "ConfigSizes",
    "InvalidRequestError",
    "NetgraftError",
    "UnknownNameError",
    "DeepenReport",
    "Deepened",
    "GatedBlock",
    "Insertion",
    "InjectionReport",
    "GrowReport",
    "GrowthSchedule",
    "grow_",
    "SIMILARITY_THRESHOLD",
    "inject",
    "inject_",
    "similarity",
    "ResidualInsert",
    "deepen",
    "fold_gates",
    "set_gates_",
    "Group",
    "LayerKind",
    "TracedLayer",
    "GroupTable",
    "NotPreservedError",
    "RuleContext",
    "UnsupportedModelError",
    "WidenReport",
    "check_preserved",
    "groups",
    "grow_checkpoint",
    "register_kind",
    "register_layer",
    "register_op",
    "unregister_kind",
    "unregister_layer",
    "unregister_op",
    "widen",
]
