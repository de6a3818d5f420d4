"""KL divergence from a reference model: zero against itself, equal to the definition computed
directly, and perplexity equal to the perplexity module's."""

import copy

import pytest
import torch

from sparsa.evaluate.divergence import divergence, reference_logprobs
from sparsa.evaluate.perplexity import perplexity

WINDOWS = torch.randint(0, 128, (3, 20), generator=torch.Generator().manual_seed(0))


def test_divergence_from_itself_is_zero(tiny_llama):
    ref = reference_logprobs(tiny_llama, WINDOWS, progress=False)
    d = divergence(tiny_llama, WINDOWS, ref, progress=False)
    assert d.kld_mean == pytest.approx(0, abs=1e-6) and d.same_top == 1.0 and d.positions == 3 * 19
    assert d.ppl == pytest.approx(perplexity(tiny_llama, WINDOWS, progress=False).ppl, rel=1e-6)


def test_divergence_matches_the_definition(tiny_llama):
    other = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    ref = reference_logprobs(tiny_llama, WINDOWS, progress=False)
    d = divergence(other, WINDOWS, ref, progress=False)
    with torch.no_grad():
        p = torch.log_softmax(tiny_llama(WINDOWS).logits[:, :-1], -1)
        q = torch.log_softmax(other(WINDOWS).logits[:, :-1], -1)
    kl = (p.exp() * (p - q)).sum(-1).flatten().double()
    assert d.kld_mean == pytest.approx(kl.mean().item(), rel=1e-4) and d.kld_mean > 0
    assert d.kld_p99 == pytest.approx(torch.quantile(kl, 0.99).item(), rel=1e-4)
    assert d.same_top == pytest.approx((p.argmax(-1) == q.argmax(-1)).double().mean().item())
    assert d.ppl == pytest.approx(perplexity(other, WINDOWS, progress=False).ppl, rel=1e-6)


def test_divergence_refuses_a_reference_of_other_windows(tiny_llama):
    ref = reference_logprobs(tiny_llama, WINDOWS[:2], progress=False)
    with pytest.raises(ValueError, match="2 windows"):
        divergence(tiny_llama, WINDOWS, ref, progress=False)
