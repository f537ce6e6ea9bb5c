"""How a sparse weight is stored for prunelab's kernel (``native/sparse_linear.c``), one class per format.

Every format starts from the weight's CSR form (:class:`Pattern`: row pointers, sorted column
indices, values), which is also what an export stores, and packs it once, at load, into the three
arrays the kernel reads (``indptr``, ``index``, ``values``); ``unpack`` gives the CSR form back.
A format says where it applies (``fits``) and how many bytes one pass over the weight reads
(``nbytes``, with its formula for the benchmark's bandwidth ceiling). Which one a layer uses is
decided by timing (:func:`prunelab.compress.sparse.sparsify`); ``mkl`` is torch's own sparse
product, the fallback where the kernel cannot be built and the oracle the kernel is tested against.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from prunelab.registry import Registry

__all__ = ["FORMATS", "Pattern", "SparseFormat", "dense_bytes"]


@dataclass(frozen=True)
class Pattern:
    """A 2-D weight (rows = outputs) in CSR form: int64 row pointers and columns, float32 values."""

    rows: int
    cols: int
    crow: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor

    @classmethod
    def of(cls, weight: torch.Tensor) -> Pattern:
        """The CSR form of a dense 2-D weight (its zeros dropped) or of a sparse CSR one."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            csr = weight.detach() if weight.layout == torch.sparse_csr else weight.detach().to_sparse_csr()
        rows, cols = csr.shape
        return cls(
            rows,
            cols,
            csr.crow_indices().long(),
            csr.col_indices().long(),
            csr.values().float().contiguous(),
        )

    @classmethod
    def from_arrays(
        cls, rows: int, cols: int, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor
    ) -> Pattern:
        return cls(int(rows), int(cols), crow.long(), col.long(), values.float().contiguous())

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def row_of(self) -> torch.Tensor:
        """The row of every kept weight."""
        return torch.repeat_interleave(torch.arange(self.rows), self.crow.diff())

    def dense(self) -> torch.Tensor:
        weight = torch.zeros(self.rows, self.cols)
        weight[self.row_of, self.col] = self.values
        return weight

    def csr(self) -> torch.Tensor:
        """A torch sparse CSR tensor with int32 indices (what MKL takes without converting)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.sparse_csr_tensor(
                self.crow.int(), self.col.int(), self.values, size=(self.rows, self.cols)
            )


def dense_bytes(rows: int, cols: int) -> int:
    """What one pass over the dense float32 weight reads."""
    return 4 * rows * cols


class SparseFormat:
    """One storage format of a sparse weight; ``code`` is the kernel's number, None for torch's own."""

    name: str = ""
    code: int | None = None
    formula: str = ""

    def fits(self, p: Pattern) -> bool:
        return True

    def pack(self, p: Pattern) -> dict[str, torch.Tensor]:
        """The arrays the kernel reads: ``indptr`` (int32), ``index``, ``values`` (float32)."""
        raise NotImplementedError

    def unpack(self, packed: dict[str, torch.Tensor], rows: int, cols: int) -> Pattern:
        raise NotImplementedError

    def nbytes(self, p: Pattern) -> int:
        raise NotImplementedError

    def shape_args(self, p: Pattern) -> tuple[int, int]:
        """(N, M) of an N:M format; (0, 0) for the others."""
        return (0, 0)


FORMATS: Registry[SparseFormat] = Registry("sparse format")


def _register(cls: type[SparseFormat]) -> type[SparseFormat]:
    FORMATS.add(cls.name, cls())
    return cls


def _indptr(p: Pattern) -> torch.Tensor:
    return p.crow.to(torch.int32)


class _CSR(SparseFormat):
    """CSR: int32 row pointers, ``width``-byte column indices, values."""

    width = 4

    def pack(self, p: Pattern) -> dict[str, torch.Tensor]:
        col = p.col if self.width == 4 else torch.where(p.col >= 32768, p.col - 65536, p.col)  # uint16 bits
        return {
            "indptr": _indptr(p),
            "index": col.to(torch.int32 if self.width == 4 else torch.int16),
            "values": p.values,
        }

    def unpack(self, packed: dict[str, torch.Tensor], rows: int, cols: int) -> Pattern:
        col = packed["index"].to(torch.int64) & (2 ** (8 * self.width) - 1)
        return Pattern.from_arrays(rows, cols, packed["indptr"], col, packed["values"])

    def nbytes(self, p: Pattern) -> int:
        return (4 + self.width) * p.nnz + 4 * (p.rows + 1)


@_register
class CSR16(_CSR):
    """CSR with uint16 column indices: 6 bytes per kept weight (inputs up to 65,536)."""

    name, code, width = "csr16", 0, 2
    formula = "4*nnz + 2*nnz + 4*(rows+1)"

    def fits(self, p: Pattern) -> bool:
        return p.cols <= 65536


@_register
class CSR32(_CSR):
    """CSR with int32 column indices: 8 bytes per kept weight (any width; used past 65,536 inputs)."""

    name, code, width = "csr32", 1, 4
    formula = "4*nnz + 4*nnz + 4*(rows+1)"

    def fits(self, p: Pattern) -> bool:
        return p.cols > 65536  # narrower: csr16 does the same work from fewer bytes


@_register
class Bitmap(SparseFormat):
    """A bit per weight (16-column masks) + 4 bytes per kept one: fewer bytes than csr16 below ~94% zeros."""

    name, code = "bitmap", 2
    formula = "4*nnz + 2*rows*ceil(cols/16) + 4*(rows+1)"

    def pack(self, p: Pattern) -> dict[str, torch.Tensor]:
        groups = -(-p.cols // 16)
        where = p.row_of * groups + p.col // 16
        words = torch.zeros(p.rows * groups, dtype=torch.int32)
        words.index_add_(0, where, (1 << (p.col % 16)).to(torch.int32))
        words = torch.where(words >= 32768, words - 65536, words)
        return {"indptr": _indptr(p), "index": words.to(torch.int16), "values": p.values}

    def unpack(self, packed: dict[str, torch.Tensor], rows: int, cols: int) -> Pattern:
        groups = -(-cols // 16)
        words = (packed["index"].to(torch.int64) & 0xFFFF).reshape(rows, groups, 1)
        keep = ((words >> torch.arange(16)) & 1).bool().reshape(rows, groups * 16)[:, :cols]
        col = keep.nonzero()[:, 1]  # row-major: the order the values are stored in
        return Pattern.from_arrays(rows, cols, packed["indptr"], col, packed["values"])

    def nbytes(self, p: Pattern) -> int:
        return 4 * p.nnz + 2 * p.rows * -(-p.cols // 16) + 4 * (p.rows + 1)


@_register
class NM(SparseFormat):
    """N kept of every M consecutive inputs (2:4, 1:4, 4:8, ...; N and M powers of two, N <= 8)."""

    name, code = "nm", 3
    formula = "(4+1)*rows*ceil(cols/M)*N + 4*(rows+1)"
    SIZES = (4, 8, 16, 32, 64, 128)

    def shape_args(self, p: Pattern) -> tuple[int, int]:
        """The (N, M) with fewest bytes whose pattern holds, (0, 0) if none: N is the most any group
        of M keeps, rounded up to a power of two; padding must stay under a quarter of the kept."""
        best, best_bytes = (0, 0), None
        if p.nnz == 0:
            return best
        rows = p.row_of
        for m in self.SIZES:
            groups = -(-p.cols // m)
            counts = torch.bincount(rows * groups + p.col // m, minlength=p.rows * groups)
            n = 1 << max(0, int(counts.max()) - 1).bit_length()
            slots = p.rows * groups * n
            if n >= m or n > 8 or slots > 1.25 * p.nnz:
                continue
            if best_bytes is None or 5 * slots < best_bytes:
                best, best_bytes = (n, m), 5 * slots
        return best

    def fits(self, p: Pattern) -> bool:
        return self.shape_args(p) != (0, 0)

    def pack(self, p: Pattern) -> dict[str, torch.Tensor]:
        n, m = self.shape_args(p)
        groups = -(-p.cols // m)
        group = p.row_of * groups + p.col // m  # non-decreasing: columns are sorted in each row
        _, counts = torch.unique_consecutive(group, return_counts=True)
        first = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        slot = group * n + (torch.arange(p.nnz) - first)
        values = torch.zeros(p.rows * groups * n)  # a group keeping fewer than N: zero weights
        offsets = torch.zeros(p.rows * groups * n, dtype=torch.uint8)
        values[slot] = p.values
        offsets[slot] = (p.col % m).to(torch.uint8)
        indptr = (torch.arange(p.rows + 1) * groups * n).to(torch.int32)
        return {"indptr": indptr, "index": offsets, "values": values, "nm": torch.tensor([n, m])}

    def unpack(self, packed: dict[str, torch.Tensor], rows: int, cols: int) -> Pattern:
        n, m = (int(v) for v in packed["nm"])
        per_row = -(-cols // m) * n
        slot = torch.arange(packed["values"].numel())
        row, col = slot // per_row, (slot % per_row) // n * m + packed["index"].to(torch.int64)
        keep = packed["values"] != 0
        crow = torch.zeros(rows + 1, dtype=torch.int64)
        crow[1:] = torch.bincount(row[keep], minlength=rows).cumsum(0)
        return Pattern.from_arrays(rows, cols, crow, col[keep], packed["values"][keep])

    def nbytes(self, p: Pattern) -> int:
        n, m = self.shape_args(p)
        return 5 * p.rows * -(-p.cols // m) * n + 4 * (p.rows + 1)


@_register
class MKL(CSR32):
    """torch.sparse CSR (int32 indices) through MKL: the fallback, and the kernel's oracle. Kept as
    its three arrays; the torch sparse tensor is made from them on use (it cannot be copied)."""

    name, code = "mkl", None

    def fits(self, p: Pattern) -> bool:
        return True
