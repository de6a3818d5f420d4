"""Configs of the merge engine: frozen dataclasses holding every default, validated on creation."""

from dataclasses import asdict, dataclass

from sparsa.errors import SparsaError

VERSION = 1
SCALE_NORMS = ("l2", "l1", "lsq")
ENCODINGS = ("auto", "bitmap", "group", "index")


@dataclass(frozen=True)
class TSwitchConfig:
    """T-Switch compression of one task vector (arXiv 2412.00054, section 3).

    Args:
        drop_ratio: alpha, the share of positive and of negative entries dropped per tensor (by
            magnitude, each sign on its own); the paper ships 0.6 (keep 40%).
        scale_norm: the one scale per tensor: ``l2`` (the paper's, ``||tau_kept||_2 / sqrt(nnz)``,
            the kept entries' RMS), ``lsq`` (``mean |tau_kept|``, the least-squares fit of
            ``scale * sign`` to the kept entries) or ``l1`` (``||tau||_1 / nnz``, the whole tensor's
            L1 mass spread over the kept entries, as EMR-Merging rescales).
        encoding: how mask positions are stored (:class:`~sparsa.formats.sign_mask.SignMask`):
            ``auto`` takes the smallest of ``bitmap``, ``group`` and ``index`` per tensor.
        group_size: g of the ``group`` encoding (the paper's 4).
    """

    drop_ratio: float = 0.6
    scale_norm: str = "l2"
    encoding: str = "auto"
    group_size: int = 4

    def __post_init__(self):
        if not 0.0 <= self.drop_ratio < 1.0:
            raise SparsaError(f"drop_ratio={self.drop_ratio}: must be in [0, 1)")
        if self.scale_norm not in SCALE_NORMS:
            raise SparsaError(f"scale_norm {self.scale_norm!r}: choose one of {', '.join(SCALE_NORMS)}")
        if self.encoding not in ENCODINGS:
            raise SparsaError(f"encoding {self.encoding!r}: choose one of {', '.join(ENCODINGS)}")
        if self.group_size < 1:
            raise SparsaError(f"group_size={self.group_size}: must be at least 1")

    def to_dict(self) -> dict:
        return {"version": VERSION, **asdict(self)}


@dataclass(frozen=True)
class RouterConfig:
    """Auto-Switch's routers (:mod:`sparsa.merge.router`; arXiv 2412.00054, section 3.3).

    Args:
        k: neighbours voting in the KNN router (the paper's 10).
        samples_per_task: query-set samples per task, features from the base model (the paper's 100).
    """

    k: int = 10
    samples_per_task: int = 100

    def __post_init__(self):
        if self.k < 1:
            raise SparsaError(f"k={self.k}: must be at least 1")
        if self.samples_per_task < 1:
            raise SparsaError(f"samples_per_task={self.samples_per_task}: must be at least 1")

    def to_dict(self) -> dict:
        return {"version": VERSION, **asdict(self)}
