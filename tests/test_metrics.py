"""Fidelity tools: zero distance for the full cache against itself, real distance under eviction."""
import torch

from linear_core import CacheSettings, Guidance, LineLayout, SamplingConfig
from linear_core.metrics import coupled_agreement, teacher_forced


def test_teacher_forced_full_is_exact_and_eviction_is_not(model):
    layout = LineLayout(model.prefix_len, 8, 6)
    guidance = Guidance(2.0, "halves")
    conditioning = model.conditioning(torch.tensor([1, 2]), guidance)
    tokens = torch.randint(0, 48, (2, layout.image_tokens), generator=torch.Generator().manual_seed(0))
    same = teacher_forced(model, conditioning, layout, tokens, CacheSettings("full"), guidance)
    assert same.kl.shape == (2, layout.image_tokens)
    assert same.kl_mean < 1e-9 and same.top1_agreement == 1.0

    tight = teacher_forced(model, conditioning, layout, tokens,
                           CacheSettings("streaming", "1 lines", sinks=1), guidance)
    per_line = tight.per_line()
    assert len(per_line["kl"]) == 8
    assert per_line["kl"][0] < 1e-9 and per_line["kl"][1] < 1e-9  # nothing evicted before line 1's boundary
    assert tight.kl_mean > 1e-6  # a random tiny model: small, but far above the full cache's 0
    assert tight.kl.min() >= -1e-6


def test_coupled_agreement(model):
    layout = LineLayout(model.prefix_len, 6, 6)
    guidance = Guidance(2.0, "halves")
    conditioning = model.conditioning(torch.tensor([3, 4, 5]), guidance)
    same = coupled_agreement(model, conditioning, layout, CacheSettings("full"), guidance, SamplingConfig(), seed=2)
    assert same.agreement == 1.0 and same.first_divergence_line == [None, None, None]
    tight = coupled_agreement(model, conditioning, layout, CacheSettings("streaming", "1 lines", sinks=1), guidance,
                              SamplingConfig(), seed=2)
    assert tight.agreement < 1.0
    first = [line for line in tight.first_divergence_line if line is not None]
    assert first and min(first) >= 2  # line 2 is the first predicted from an evicted cache


def test_teacher_forced_rejects_tokens_that_do_not_fit(model):
    import pytest

    layout = LineLayout(model.prefix_len, 4, 4)
    conditioning = model.conditioning(torch.tensor([1]), Guidance(1.0, "none"))
    with pytest.raises(ValueError, match="do not fit a 4x4 grid"):
        teacher_forced(model, conditioning, layout, torch.zeros(1, 17, dtype=torch.long), CacheSettings("linear", "1/2"))
