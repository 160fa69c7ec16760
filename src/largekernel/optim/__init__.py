"""Optimization: parameter groups from marks (:mod:`.groups`) and the DCLS learning techniques (:mod:`.dcls`)."""

from largekernel.optim.dcls import SigmaSchedule, dcls_repulsive_loss, install_dcls_clamp, share_positions
from largekernel.optim.groups import mark, param_groups

__all__ = ["mark", "param_groups", "install_dcls_clamp", "share_positions", "dcls_repulsive_loss", "SigmaSchedule"]
