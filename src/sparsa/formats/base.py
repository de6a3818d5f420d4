"""What every compressed-weight format shares: arrays, metadata, exact size, validated I/O.

A format is plain data: a frozen dataclass whose tensor fields are listed in ``ARRAYS`` and
whose other fields are small JSON-able metadata. It holds a 2-D weight ``W: [out, in]``.
"""

from dataclasses import MISSING, dataclass, fields, replace
from typing import ClassVar

import torch

from sparsa.errors import SparsaError

VALUE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check(ok: bool, where: str, message: str) -> None:
    """Raise a SparsaError ``"{where}: {message}"`` unless ``ok``."""
    if not ok:
        raise SparsaError(f"{where}: {message}")


def check_array(t: torch.Tensor, where: str, name: str, dtypes, shape: tuple[int, ...]) -> None:
    """Check one array's dtype (one of ``dtypes``) and exact ``shape``."""
    check(isinstance(t, torch.Tensor), where, f"{name} is not a tensor")
    check(t.dtype in dtypes, where, f"{name} has dtype {t.dtype}, expected one of {list(dtypes)}")
    check(tuple(t.shape) == tuple(shape), where, f"{name} has shape {list(t.shape)}, expected {list(shape)}")


@dataclass(frozen=True, eq=False)
class Format:
    """Base of all formats. ``shape`` is ``(out_features, in_features)`` of the dense weight."""

    format_name: ClassVar[str]
    ARRAYS: ClassVar[tuple[str, ...]]

    shape: tuple[int, int]

    # -- structure ---------------------------------------------------------------------
    def arrays(self) -> dict[str, torch.Tensor]:
        """The tensors that make up the format, by name (what the checkpoint stores; an array
        field that is None is left out)."""
        return {name: getattr(self, name) for name in self.ARRAYS if getattr(self, name) is not None}

    def meta(self) -> dict:
        """The non-tensor fields, JSON-able (tuples become lists)."""
        out = {}
        for f in fields(self):
            if f.name not in self.ARRAYS:
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def numel(self) -> int:
        """Parameter count of the dense weight."""
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        """Exact bytes of the arrays, i.e. what the checkpoint writes for this weight."""
        return sum(t.numel() * t.element_size() for t in self.arrays().values())

    @classmethod
    def array_names(cls, meta: dict) -> tuple[str, ...]:
        """The arrays a weight with metadata ``meta`` stores: ``ARRAYS``, unless a format leaves
        some out for some metadata."""
        return cls.ARRAYS

    def to(self, device) -> "Format":
        """The same format with every array on ``device``."""
        return replace(self, **{k: v.to(device) for k, v in self.arrays().items()})

    # -- I/O ---------------------------------------------------------------------------
    def to_state_dict(self) -> dict[str, torch.Tensor]:
        """Arrays by name, contiguous, ready for safetensors."""
        return {k: v.contiguous() for k, v in self.arrays().items()}

    @classmethod
    def from_state_dict(cls, arrays: dict, meta: dict, *, where: str) -> "Format":
        """Rebuild from stored arrays + metadata, validating everything before returning.

        Args:
            arrays: name -> tensor, exactly ``cls.array_names(meta)``.
            meta: name -> value, the non-array fields (lists allowed for tuples); a field with a
                default (added after checkpoints were written) may be absent.
            where: names the tensor in errors, e.g. ``"model-00001-of-00001.safetensors:q_proj"``.
        """
        meta_names = {f.name for f in fields(cls)} - set(cls.ARRAYS)
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        check(required - set(cls.ARRAYS) <= set(meta) <= meta_names, where,
              f"{cls.format_name} metadata has keys {sorted(meta)}, expected {sorted(meta_names)}")
        names = cls.array_names(meta)
        missing = sorted(set(names) - set(arrays))
        extra = sorted(set(arrays) - set(names))
        check(not missing, where, f"missing arrays {missing}")
        check(not extra, where, f"unexpected arrays {extra}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in meta.items()}
        fmt = cls(**kwargs, **{name: arrays.get(name) for name in cls.ARRAYS})
        fmt.validate(where)
        return fmt

    def validate(self, where: str) -> None:
        """Check metadata, dtypes, shapes and index ranges; raise SparsaError naming ``where``."""
        shape = self.shape
        check(isinstance(shape, tuple) and len(shape) == 2
              and all(isinstance(s, int) and s > 0 for s in shape),
              where, f"shape {shape!r} is not two positive integers")

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense weight ``[out, in]`` (``dtype`` defaults to the stored value dtype)."""
        raise NotImplementedError
