"""Config of AnchorAttention: a frozen dataclass holding every default, validated on creation."""

import math
from dataclasses import asdict, dataclass

from sparsa.errors import SparsaError
from sparsa.kernels.stripe_regions import StripeRegions

VERSION = 2
BACKENDS = ("auto", "torch", "triton")
IDENTIFY = ("rows", "pooled")


@dataclass(frozen=True)
class AnchorConfig:
    """AnchorAttention parameters (arXiv 2505.23520, with one region definition; see
    :mod:`sparsa.kernels.stripe_regions`).

    Args:
        theta: keep a stripe key when its score comes within ``theta`` (natural-log units) of the
            anchor; ``inf`` keeps every key (dense causal), ``-inf`` none (init + local). The
            paper's 12 was set for its pooled rule on 8B models at 128k; on SmolLM2-135M at 4k
            tokens the ``rows`` rule at 4 keeps density 0.280 with perplexity +0.45%
            (``sparsa attention eval --sweep`` draws recall against density).
        identify: ``rows`` (default), the group's rows each against their own anchor, or
            ``pooled`` (the paper's), each tile's mean query against its mean anchor: ``block_m``
            times cheaper to select, worse at equal density; see :mod:`sparsa.attention.anchor`.
        block_m: query rows per tile (the pooling unit of ``pooled``, the kernels' row tile).
        step: tiles per group; the rows of a group share one stripe set.
        init: leading keys every row attends densely.
        window: keys before a group's first row that all its rows attend densely (so the first rows
            of a group still see their recent past). At equal density a wider window beat a larger
            theta on perplexity (SmolLM2, 4k, ``pooled``: theta 9 / window 128 +2.0%, theta 7 /
            window 384 +1.3%).
        backend: ``torch`` (the reference), ``triton`` (the kernels), or ``auto`` (Triton on CUDA).
    """

    theta: float = 4.0
    identify: str = "rows"
    block_m: int = 64
    step: int = 1
    init: int = 64
    window: int = 384
    backend: str = "auto"

    def __post_init__(self):
        if math.isnan(self.theta):
            raise SparsaError("--theta nan: theta must be a number (inf and -inf are allowed)")
        if self.identify not in IDENTIFY:
            raise SparsaError(f"identify {self.identify!r}: choose one of {', '.join(IDENTIFY)}")
        if self.backend not in BACKENDS:
            raise SparsaError(f"backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        self.regions  # validates the geometry

    @property
    def regions(self) -> StripeRegions:
        return StripeRegions(block_m=self.block_m, step=self.step, init=self.init, window=self.window)

    def to_dict(self) -> dict:
        return {"version": VERSION, **asdict(self)}
