"""monorecon.core.checks: the finiteness and [0, 1] checks against their plain definitions (isfinite / comparisons
element by element), including NaN and infinities at the ends of a tensor and in reduced precision."""

from __future__ import annotations

import pytest
import torch

from monorecon.core.checks import NonFiniteError, check_bool, check_non_negative, check_positive, check_tensor


def _accepted(x: torch.Tensor, **kwargs) -> bool:
    try:
        check_tensor(x, "x", **kwargs)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_finite_check_is_isfinite_everywhere(dtype):
    generator = torch.Generator().manual_seed(0)
    specials = [float("nan"), float("inf"), -float("inf")]
    for trial in range(60):
        x = torch.randn(7, 33, generator=generator).to(dtype) * 10 ** (trial % 5)
        if trial % 4:  # three in four tensors get a special value: first, last or anywhere
            position = [0, x.numel() - 1, int(torch.randint(x.numel(), (1,), generator=generator))][trial % 3]
            x.view(-1)[position] = specials[trial % 3]
        assert _accepted(x) == bool(torch.isfinite(x).all()), (trial, x.view(-1)[position])
        assert _accepted(x, finite=False)  # not asked: anything goes


def test_unit_range_check_is_the_elementwise_bounds():
    generator = torch.Generator().manual_seed(1)
    for trial in range(40):
        x = torch.rand(5, 9, generator=generator) * (1 + 0.02 * (trial % 3)) - 0.01 * (trial % 2)
        expected = bool(((x >= 0) & (x <= 1)).all())
        assert _accepted(x, unit_range=True) == expected
    assert _accepted(torch.tensor([0, 1], dtype=torch.uint8), unit_range=True)
    assert not _accepted(torch.tensor([0, 2], dtype=torch.uint8), unit_range=True)
    assert _accepted(torch.tensor([True, False]), unit_range=True)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got values in \[-0.5, 1\]"):
        check_tensor(torch.tensor([1.0, -0.5]), "colours", unit_range=True)
    with pytest.raises(ValueError, match="colours contains NaN"):
        check_tensor(torch.tensor([0.5, float("nan")]), "colours", unit_range=True)
    assert not _accepted(torch.tensor([0.5, float("nan")]), finite=False, unit_range=True)  # NaN is not in [0, 1]


def test_empty_and_integer_tensors_pass_the_value_checks():
    assert _accepted(torch.empty(0, 3)) and _accepted(torch.empty(0, 3), unit_range=True)
    assert _accepted(torch.tensor([5, -7]))  # integers are always finite
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    assert check_tensor(x, "x") is x  # returned as given, a tensor needing its gradient too


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (check_bool, "no", "flag must be True or False, got 'no'"),  # a non-empty string would read as true
        (check_bool, 1, "flag must be True or False, got 1"),
        (check_positive, "1e-4", "flag must be a number, got '1e-4'"),
        (check_positive, True, "flag must be a number, got True"),
        (check_positive, 0.0, "flag must be positive and finite, got 0.0"),
        (check_positive, float("nan"), "flag must be positive and finite, got nan"),
        (check_non_negative, -1e-9, "flag must be a finite number >= 0, got -1e-09"),
        (check_non_negative, float("inf"), "flag must be a finite number >= 0, got inf"),
        (check_non_negative, None, "flag must be a number, got None"),
    ],
)
def test_option_checks_name_what_is_wrong(check, value, message):
    with pytest.raises(ValueError) as raised:
        check(value, "flag")
    assert str(raised.value) == message


def test_option_checks_return_plain_values_and_nan_is_a_non_finite_error():
    assert check_bool(False, "f") is False and check_positive(3, "f") == 3.0 and check_non_negative(0, "f") == 0.0
    with pytest.raises(NonFiniteError, match="x contains NaN or infinite values"):  # a ValueError too
        check_tensor(torch.tensor([1.0, float("nan")]), "x")
