"""AnchorAttention: stripe-sparse causal attention for long-context prefill (arXiv 2505.23520)."""

from sparsa.attention.anchor import AnchorResult, anchor_attention
from sparsa.attention.config import AnchorConfig

__all__ = ["AnchorConfig", "AnchorResult", "anchor_attention"]
