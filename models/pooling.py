"""Adaptive max pooling rewritten as a gather and one plain MaxPool, bit-exact.

``AdaptiveMaxPool2d(n → m)`` takes, for output ``i``, the max over input ``[floor(i·n/m), ceil((i+1)·n/m))``.
When ``m`` does not divide ``n`` the windows have unequal lengths (2 or 3 for 75 → 38), which ONNX's MaxPool cannot
express and torch.onnx cannot export. But the max is separable (rows, then columns) and idempotent (repeating an
element does not change a max). So: gather, along each axis, ``k = max window length`` indices per window — the
window's own indices, the last one repeated to fill ``k`` — then a ``k x k`` MaxPool with stride ``k`` sees exactly
each window's elements. Three standard ops in a chain (Gather, Gather, MaxPool); no arithmetic, hence bit-exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def adaptive_windows(n: int, m: int) -> list[tuple[int, int]]:
    """The half-open input windows ``[floor(i·n/m), ceil((i+1)·n/m))`` of adaptive pooling ``n → m``."""
    if n < 1 or m < 1:
        raise ValueError(f"adaptive pooling needs positive sizes, got {n} -> {m}")
    return [((i * n) // m, -((-(i + 1) * n) // m)) for i in range(m)]


def adaptive_gather_index(n: int, m: int) -> tuple[list[int], int]:
    """Indices to gather along one axis, and the window length ``k``, for the decomposition above."""
    windows = adaptive_windows(n, m)
    k = max(end - start for start, end in windows)
    index = [start + min(j, end - start - 1) for start, end in windows for j in range(k)]
    return index, k


def is_plain_max_pool(n: int, m: int) -> bool:
    """True when ``n → m`` adaptive pooling equals ``MaxPool(k=n/m, stride=n/m)`` (m divides n)."""
    return n % m == 0


class ExactAdaptiveMaxPool2d(nn.Module):
    """Drop-in for ``nn.AdaptiveMaxPool2d(size)`` built from gathers and a plain max pool (see module doc)."""

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    def forward(self, x: Tensor) -> Tensor:
        (mh, mw), (n_h, n_w) = self.output_size, x.shape[-2:]
        if is_plain_max_pool(n_h, mh) and is_plain_max_pool(n_w, mw):
            return F.max_pool2d(x, (n_h // mh, n_w // mw))
        index_h, kh = adaptive_gather_index(int(n_h), mh)
        index_w, kw = adaptive_gather_index(int(n_w), mw)
        x = x.index_select(-2, torch.tensor(index_h, device=x.device))
        x = x.index_select(-1, torch.tensor(index_w, device=x.device))
        return F.max_pool2d(x, (kh, kw))
