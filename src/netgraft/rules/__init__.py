"""The built-in coupling rules (how each torch op and layer couples the axes of its tensors) and layer kinds.

One file per family of ops; importing this package registers them all in `netgraft.core.registry`. A rule describes
couplings only (which axes are one unit space, which are summed over, fixed or blocked); netgraft derives every
resize from them. Each rule opens with a shape comment.

Next to a layer's rule is its `LayerKind` (`netgraft.core.layers`): the one place with everything else netgraft
knows about the layer type - the attributes that must match its weights, how deepen reads its traced op and builds
an identity copy, GradMax's algebra, inject's layout. `conv.py` holds both for convolutions, `linear.py` for Linear
(and Hugging Face's Conv1D), `norm.py` for the norms, `embedding.py` and `attention.py` for theirs.
"""

from . import attention, contract, conv, embedding, linear, norm, pointwise, reduce, shape  # noqa: F401 - registers
