import pytest
import torch

from planners.policy import Rollout


def _rollout(b: int = 2, n: int = 3, s: int = 4) -> Rollout:
    mask = torch.ones(b, n, s, dtype=torch.bool)
    mask[..., -1] = False
    log_prob = torch.arange(b * n * s, dtype=torch.float32).reshape(b, n, s)
    return Rollout(torch.zeros(b, n, 8, 3), log_prob, mask, torch.zeros(b, n, dtype=torch.long))


def test_sequence_log_prob_sums_counted_steps_only() -> None:
    r = _rollout()
    expected = r.log_prob[..., :-1].sum(-1)
    assert torch.equal(r.sequence_log_prob(), expected)
    assert r.sequence_log_prob()[0, 0].item() == 0 + 1 + 2


def test_validate_names_the_bad_field() -> None:
    r = _rollout()
    r.validate()
    r.groups = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="groups"):
        r.validate()
    r = _rollout()
    r.chains = {"x_t": torch.zeros(3, 3)}
    with pytest.raises(ValueError, match="x_t"):
        r.validate()
