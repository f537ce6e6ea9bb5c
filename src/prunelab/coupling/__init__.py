"""Coupled groups: which dimensions of which tensors shrink together, from graph to mask to compaction.

:func:`discover` traces a model and returns its :class:`Groups`; structured pruning removes units
of groups (:class:`Group`), and :func:`prunelab.compress.compact` deletes them from every member.
"""

from prunelab.coupling.group import Group, Groups, Member, discover
from prunelab.coupling.modules import SIZE_ATTRIBUTES, AttentionRule, register_attention

__all__ = ["SIZE_ATTRIBUTES", "AttentionRule", "Group", "Groups", "Member", "discover", "register_attention"]
