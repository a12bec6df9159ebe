"""The built-in coupling rules: how each torch op and layer couples the axes of its tensors.

One file per family of ops; importing this package registers them all in `netgraft.core.registry`. A rule describes
couplings only (which axes are one unit space, which are summed over, fixed or blocked); netgraft derives every
resize from them.
"""

from . import attention, contract, conv, embedding, linear, norm, pointwise, reduce, shape  # noqa: F401 - registers
