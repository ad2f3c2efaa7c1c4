"""monorecon.core.checks: the finiteness and [0, 1] checks against their plain definitions (isfinite / comparisons
element by element), including NaN and infinities at the ends of a tensor and in reduced precision."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from monorecon.core.checks import (
    NonFiniteError,
    check_bool,
    check_device,
    check_image_size,
    check_int,
    check_non_negative,
    check_positive,
    check_tensor,
    warn_if_slow_bfloat16,
)


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


# --------------------------------------------------------------------------------------------------------------------
# shapes, dtypes and options: each branch and its message, from hand-built inputs
# --------------------------------------------------------------------------------------------------------------------
def _message(function, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as raised:
        function(*args, **kwargs)
    return str(raised.value)


def test_shape_spec_exact_any_and_wrong_rank():
    assert _message(check_tensor, [1.0], "points") == "points must be a torch.Tensor, got list"
    assert _message(check_tensor, torch.zeros(3), "points", (3, None)) == "points must have shape (3, *), got (3,)"
    assert _message(check_tensor, torch.zeros(3, 2, 1), "points", (3, None)) == (
        "points must have shape (3, *), got (3, 2, 1)"
    )
    for size in (7, 1, 0):  # any size along a None axis
        check_tensor(torch.zeros(3, size), "points", (3, None))
    for rows in (2, 4):  # an exact size, too small or too large
        assert _message(check_tensor, torch.zeros(rows, 5), "points", (3, None)) == (
            f"points must have shape (3, *), got ({rows}, 5)"
        )
    # An exact size after a None axis is still checked.
    assert _message(check_tensor, torch.zeros(2, 4), "points", (None, 3)) == "points must have shape (*, 3), got (2, 4)"


def test_named_sizes_are_recorded_and_must_agree():
    sizes: dict[str, int] = {}
    check_tensor(torch.zeros(4, 3), "origins", ("n", 3), sizes=sizes)
    assert sizes == {"n": 4}
    check_tensor(torch.zeros(4, 3), "directions", ("n", 3), sizes=sizes)
    for rows in (3, 5):
        assert _message(check_tensor, torch.zeros(rows, 3), "directions", ("n", 3), sizes=sizes) == (
            f"directions has {rows} along axis 0 ('n'), expected 4"
        )
    # The same name on two axes of one tensor must agree as well; without a sizes dict names are not compared.
    assert _message(check_tensor, torch.zeros(2, 3), "square", ("k", "k"), sizes={}) == (
        "square has 3 along axis 1 ('k'), expected 2"
    )
    check_tensor(torch.zeros(2, 3), "square", ("k", "k"))


def test_floating_and_integer_dtypes():
    check_tensor(torch.zeros(2), "x", floating=True)
    check_tensor(torch.zeros(2, dtype=torch.int64), "x", floating=False)
    check_tensor(torch.zeros(2, dtype=torch.int64), "x")  # floating=None: either
    assert _message(check_tensor, torch.zeros(2, dtype=torch.int32), "faces", floating=True) == (
        "faces must be a floating-point tensor, got torch.int32"
    )
    assert _message(check_tensor, torch.zeros(2, dtype=torch.float16), "faces", floating=False) == (
        "faces must be an integer tensor, got torch.float16"
    )


def test_check_int_bounds_are_inclusive_and_only_integers_pass():
    assert check_int(3, "n", 3, 9) == 3 and check_int(9, "n", 3, 9) == 9
    value = check_int(np.int64(5), "n", 3, 9)
    assert value == 5 and type(value) is int
    assert _message(check_int, 2, "n", 3, 9) == "n must lie in [3, 9], got 2"
    assert _message(check_int, 10, "n", 3, 9) == "n must lie in [3, 9], got 10"
    for bad in (True, 4.0, "4", None):
        assert _message(check_int, bad, "n", 3, 9) == f"n must be an integer, got {bad!r}"


def test_check_positive_refuses_infinity_and_negatives():
    assert _message(check_positive, float("inf"), "lr") == "lr must be positive and finite, got inf"
    assert _message(check_positive, -2, "lr") == "lr must be positive and finite, got -2"
    assert check_positive(1e-300, "lr") == 1e-300


def test_image_sizes():
    height, width = check_image_size(3, 5.0)
    assert (height, width) == (3, 5) and type(width) is int
    assert check_image_size(16384, 1) == (16384, 1)
    assert _message(check_image_size, 16385, 4) == "image height 16385 is larger than the maximum 16384"
    assert _message(check_image_size, 4, 65, max_side=64) == "image width 65 is larger than the maximum 64"
    assert _message(check_image_size, 4, 0) == "image width must be a positive integer, got 0"
    assert _message(check_image_size, 2.5, 4) == "image height must be a positive integer, got 2.5"
    # Values that cannot be converted to an int are a ValueError naming the side too (not OverflowError/TypeError).
    for bad in (float("inf"), float("nan"), None, "x"):
        assert _message(check_image_size, 4, bad).startswith("image width must be a positive integer, got")


def test_cuda_device_indices_are_checked_against_the_device_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == torch.device("cuda:1")
    assert check_device("cuda") == torch.device("cuda")
    assert _message(check_device, "cuda:2") == "device 'cuda:2': this machine has 2 CUDA device(s)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_device("auto") == torch.device("cpu")
    assert _message(check_device, "cuda:0") == "device 'cuda:0': this machine has no CUDA device (use 'auto' or 'cpu')"


@pytest.mark.parametrize(
    ("device", "capabilities", "warns"),
    [
        ("cpu", {}, True),
        ("cpu", {"avx512_bf16": True}, False),
        ("cpu", {"amx_bf16": True}, False),
        ("cuda", {}, False),
    ],
)
def test_slow_bfloat16_warning_only_on_a_cpu_without_bf16_units(monkeypatch, device, capabilities, warns):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_slow_bfloat16(device, "training")
    assert [str(w.message) for w in caught] == (
        ["bfloat16 training on this CPU (no AVX512-BF16 or AMX) is much slower than float32; use float32 here"]
        if warns
        else []
    )
