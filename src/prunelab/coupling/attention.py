"""Attention modules whose head width is their own, for compaction to swap in.

``nn.MultiheadAttention`` requires ``num_heads * head_dim == embed_dim`` and torchvision's
shifted-window attention computes the head width as ``C // num_heads`` from its input: once heads
or the model width are pruned, neither holds. The modules here keep the same parameters under the
same names and compute the same function with the head count and width as attributes of their own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CompactMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (packed ``in_proj``, no ``bias_k``/``bias_v``) with ``num_heads``
    heads of ``head_dim`` channels on an ``embed_dim``-wide input; same call and outputs."""

    def __init__(
        self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True, batch_first: bool = False,
        dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        width = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width)) if bias else None
        self.out_proj = nn.Linear(width, embed_dim, bias=bias)

    @classmethod
    def of(cls, old: nn.Module) -> CompactMultiheadAttention:
        """The module computing what ``old`` (an ``nn.MultiheadAttention`` or one of these, its
        parameters already sliced) computes, sharing its parameters."""
        width = old.in_proj_weight.shape[0] // 3
        heads = int(old.num_heads)
        with torch.device("meta"):
            new = cls(
                old.in_proj_weight.shape[1], heads, width // max(heads, 1), old.in_proj_bias is not None,
                old.batch_first, float(old.dropout),
            )  # fmt: skip
        new.in_proj_weight = old.in_proj_weight
        new.in_proj_bias = old.in_proj_bias
        new.out_proj = old.out_proj
        new.train(old.training)
        return new

    def plan(self) -> dict:
        return {
            "embed_dim": self.embed_dim, "num_heads": self.num_heads, "head_dim": self.head_dim,
            "bias": self.in_proj_bias is not None, "batch_first": self.batch_first, "dropout": self.dropout,
        }  # fmt: skip

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if self.batch_first and batched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        length, batch, _ = query.shape
        source = key.shape[0]
        width = self.num_heads * self.head_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        parts = [(query, 0), (key, 1), (value, 2)]
        q, k, v = (
            F.linear(x, w[i * width : (i + 1) * width], None if b is None else b[i * width : (i + 1) * width])
            for x, i in parts
        )

        def heads(t: torch.Tensor, n: int) -> torch.Tensor:  # (n, batch, width) -> (batch, heads, n, dim)
            return t.reshape(n, batch, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

        q, k, v = heads(q, length), heads(k, source), heads(v, source)
        mask = _merged_mask(attn_mask, key_padding_mask, batch, self.num_heads, length, source, q.dtype)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            if is_causal and mask is None:
                mask = torch.triu(torch.full((length, source), -math.inf, dtype=q.dtype, device=q.device), 1)
            if mask is not None:
                scores = scores + mask
            weights = F.softmax(scores, dim=-1)
            if dropout > 0:
                weights = F.dropout(weights, p=dropout)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal and mask is None
            )
            weights = None
        out = out.permute(2, 0, 1, 3).reshape(length, batch, width)
        out = self.out_proj(out)
        if self.batch_first and batched:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
        if weights is not None:
            weights = weights.mean(dim=1) if average_attn_weights else weights
            if not batched:
                weights = weights.squeeze(0)
        return out, weights


def _merged_mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    batch: int,
    heads: int,
    length: int,
    source: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """One additive mask of shape broadcastable to (batch, heads, length, source), as
    ``nn.MultiheadAttention`` combines them (boolean: True means not allowed)."""

    def additive(m: torch.Tensor) -> torch.Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, -math.inf)
        return m.to(dtype)

    mask = None
    if attn_mask is not None:
        mask = additive(attn_mask)
        mask = mask.view(batch, heads, length, source) if mask.dim() == 3 else mask.view(1, 1, length, source)
    if key_padding_mask is not None:
        pad = additive(key_padding_mask).view(batch, 1, 1, source)
        mask = pad if mask is None else mask + pad
    return mask


class CompactShiftedWindowAttention(nn.Module):
    """torchvision's ``ShiftedWindowAttention`` (and ``V2``, cosine attention with a continuous
    position bias) with ``num_heads`` heads of ``head_dim`` channels, whatever the input width."""

    def __init__(
        self, window_size: list[int], shift_size: list[int], num_heads: int, head_dim: int,
        attention_dropout: float = 0.0, dropout: float = 0.0, v2: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.window_size, self.shift_size = list(window_size), list(shift_size)
        self.num_heads, self.head_dim, self.v2 = num_heads, head_dim, v2
        self.attention_dropout, self.dropout = attention_dropout, dropout

    @classmethod
    def of(cls, old: nn.Module) -> CompactShiftedWindowAttention:
        heads = int(old.num_heads)
        new = cls(
            old.window_size, old.shift_size, heads, old.qkv.weight.shape[0] // (3 * max(heads, 1)),
            old.attention_dropout, old.dropout, hasattr(old, "logit_scale"),
        )  # fmt: skip
        return _adopt(new, old)

    def plan(self) -> dict:
        return {
            "window_size": self.window_size, "shift_size": self.shift_size, "num_heads": self.num_heads,
            "head_dim": self.head_dim, "attention_dropout": self.attention_dropout, "dropout": self.dropout,
            "v2": self.v2,
        }  # fmt: skip

    def position_bias(self) -> torch.Tensor:
        """(1, heads, N, N): the learned bias of each head for each pair of window positions."""
        n = self.window_size[0] * self.window_size[1]
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads) if self.v2 else (
            self.relative_position_bias_table
        )  # fmt: skip
        bias = table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
        return 16 * torch.sigmoid(bias) if self.v2 else bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        wh, ww = self.window_size
        pad_r, pad_b = (ww - width % ww) % ww, (wh - height % wh) % wh
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        _, ph, pw, channels = x.shape
        shift = [0 if wh >= ph else self.shift_size[0], 0 if ww >= pw else self.shift_size[1]]
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = (ph // wh) * (pw // ww)
        x = x.view(batch, ph // wh, wh, pw // ww, ww, channels).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(batch * windows, wh * ww, channels)
        bias = self.qkv.bias
        if self.v2 and bias is not None:
            bias = bias.clone()
            third = bias.numel() // 3
            bias[third : 2 * third].zero_()
        qkv = F.linear(x, self.qkv.weight, bias)
        qkv = qkv.reshape(x.size(0), x.size(1), 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.v2:
            attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
            attn = attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        else:
            attn = (q * self.head_dim**-0.5).matmul(k.transpose(-2, -1))
        attn = attn + self.position_bias()
        if sum(shift) > 0:
            attn = attn.view(x.size(0) // windows, windows, self.num_heads, x.size(1), x.size(1))
            attn = attn + _shift_mask(x, ph, pw, self.window_size, shift).unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, x.size(1), x.size(1))
        attn = F.softmax(attn, dim=-1)
        attn = F.dropout(attn, p=self.attention_dropout, training=self.training)
        x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), self.num_heads * self.head_dim)
        x = F.linear(x, self.proj.weight, self.proj.bias)
        x = F.dropout(x, p=self.dropout, training=self.training)
        out = x.shape[-1]
        x = (
            x.view(batch, ph // wh, pw // ww, wh, ww, out)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(batch, ph, pw, out)
        )
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :height, :width, :].contiguous()


def _adopt(new: nn.Module, old: nn.Module) -> nn.Module:
    """``new`` holding ``old``'s submodules, parameters and buffers (the same objects, same names)."""
    for name, child in old.named_children():
        new.add_module(name, child)
    for name, p in old.named_parameters(recurse=False):
        new.register_parameter(name, p)
    for name, b in old.named_buffers(recurse=False):
        new.register_buffer(name, b, persistent=name not in old._non_persistent_buffers_set)
    new.train(old.training)
    return new


def _shift_mask(x: torch.Tensor, ph: int, pw: int, window: list[int], shift: list[int]) -> torch.Tensor:
    """(windows, N, N): -100 between positions of a shifted window that come from different regions."""
    regions = x.new_zeros((ph, pw))
    count = 0
    for h in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for w in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            regions[h[0] : h[1], w[0] : w[1]] = count
            count += 1
    regions = regions.view(ph // window[0], window[0], pw // window[1], window[1]).permute(0, 2, 1, 3)
    regions = regions.reshape(-1, window[0] * window[1])
    diff = regions.unsqueeze(1) - regions.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class CompactRelativeAttention(nn.Module):
    """torchvision MaxViT's ``RelativePositionalMultiHeadAttention`` (its output reshaped to the
    input width there) with ``n_heads`` heads of ``head_dim`` channels, whatever the input width."""

    def __init__(self, n_heads: int, head_dim: int, size: int, max_seq_len: int, scale_factor: float) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.size, self.max_seq_len, self.scale_factor = size, max_seq_len, scale_factor

    @classmethod
    def of(cls, old: nn.Module) -> CompactRelativeAttention:
        heads = int(old.n_heads)
        new = cls(
            heads,
            old.to_qkv.weight.shape[0] // (3 * max(heads, 1)),
            old.size,
            old.max_seq_len,
            old.scale_factor,
        )
        return _adopt(new, old)

    def plan(self) -> dict:
        return {
            "n_heads": self.n_heads, "head_dim": self.head_dim, "size": self.size,
            "max_seq_len": self.max_seq_len, "scale_factor": self.scale_factor,
        }  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, groups, positions, _ = x.shape
        q, k, v = torch.chunk(self.to_qkv(x), 3, dim=-1)
        shape = (batch, groups, positions, self.n_heads, self.head_dim)
        q, k, v = (t.reshape(shape).permute(0, 1, 3, 2, 4) for t in (q, k, v))
        scores = q @ (k * self.scale_factor).transpose(-2, -1)
        index = self.relative_position_index.view(-1)
        bias = self.relative_position_bias_table[index].view(self.max_seq_len, self.max_seq_len, -1)
        scores = F.softmax(scores + bias.permute(2, 0, 1).contiguous().unsqueeze(0), dim=-1)
        out = (
            (scores @ v)
            .permute(0, 1, 3, 2, 4)
            .reshape(batch, groups, positions, self.n_heads * self.head_dim)
        )
        return self.merge(out)


SWAPPED: dict[str, type[nn.Module]] = {
    "CompactMultiheadAttention": CompactMultiheadAttention,
    "CompactShiftedWindowAttention": CompactShiftedWindowAttention,
    "CompactRelativeAttention": CompactRelativeAttention,
}
"""The modules compaction may swap in, by class name (what an export plan records)."""
