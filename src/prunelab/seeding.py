"""Every random draw derives from one replicate seed plus a purpose, so draws never collide."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, purpose: str) -> int:
    """A stable 63-bit seed for ``purpose`` (e.g. 'init', 'data-order') of replicate ``seed``."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
