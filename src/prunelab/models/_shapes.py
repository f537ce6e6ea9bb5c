"""Output-size arithmetic for convolutions and pooling.

Models size their first fully-connected layer from the input shape at build time, so any input
that survives the pooling works without a dummy forward pass (which would cost time and RNG draws).
"""

from __future__ import annotations


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a convolution (PyTorch's floor rule)."""
    return (size + 2 * padding - kernel) // stride + 1


def pool_out(size: int, kernel: int = 2) -> int:
    """Spatial size after ``MaxPool2d(kernel)`` (stride = kernel, floor rule)."""
    return (size - kernel) // kernel + 1
