"""A compressed task vector: every tensor of a fine-tune's difference from its base as a
:class:`~sparsa.formats.sign_mask.SignMask`, plus the 0-d tensors kept raw (T-Switch's output,
:func:`sparsa.merge.methods.tswitch.compress_task_vector`; read and written by :mod:`sparsa.nn.merge_io`)."""

from dataclasses import dataclass

import torch

from sparsa.formats.sign_mask import SignMask


@dataclass
class CompressedTaskVector:
    """A task vector as SignMasks (``masks``) plus the 0-d tensors it keeps raw (``raw``, fp32)."""

    masks: dict[str, SignMask]
    raw: dict[str, torch.Tensor]

    @property
    def numel(self) -> int:
        return sum(m.numel for m in self.masks.values()) + len(self.raw)

    @property
    def nbytes(self) -> int:
        """Bytes of every stored array (mask positions, signs, scales, raw scalars)."""
        return sum(m.nbytes for m in self.masks.values()) + 4 * len(self.raw)

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / max(self.numel, 1)

    def tensor(self, name: str) -> torch.Tensor:
        """``tau_hat`` of one tensor, fp32."""
        return self.raw[name].clone() if name in self.raw else self.masks[name].to_dense(torch.float32)

    def decompress(self) -> dict[str, torch.Tensor]:
        """``{name: tau_hat}`` fp32."""
        return {n: self.tensor(n) for n in (*self.masks, *self.raw)}
