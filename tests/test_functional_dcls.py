"""DCLS kernel construction against the official ``dcls`` package and formulas written here."""

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from largekernel.functional.dcls import construct_kernel

from DCLS.construct.modules import Dcls1d, Dcls2d, Dcls3d, Dcls3_1d

_REF = {1: Dcls1d, 2: Dcls2d, 3: Dcls3d}
_VERSION = {"bilinear": "v1", "gaussian": "gauss", "triangle": "max"}


def _reference_kernel(box, interpolation, groups=2, spread=3.0):
    """A reference module with spread-out positions (some outside the box) and random widths."""
    kw = {"use_implicit_gemm": False} if len(box) == 2 else {}
    ref = _REF[len(box)](4, 6, 5, dilated_kernel_size=box, groups=groups, version=_VERSION[interpolation],
                         **kw).double()
    with torch.no_grad():
        ref.P.uniform_(-spread, spread)
        if ref.SIG is not None:
            ref.SIG.uniform_(-1, 1)
    return ref


def _keys(x, a=-0.5):
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def _brute_force(weight, P, box, profile, normalise):
    """Evaluate every element at every cell: K[c] = sum_k w_k prod_d f(c_d - p_{k,d}) / norm_k."""
    m = len(box)
    out = torch.zeros(*weight.shape[:-1], *box, dtype=torch.float64)
    for lead in itertools.product(*map(range, weight.shape[:-1])):
        for k in range(weight.shape[-1]):
            pos = [P[(m - 1 - d, *lead, k)].item() + box[d] // 2 for d in range(m)]
            vals = {c: math.prod(profile(c[d] - pos[d]) for d in range(m)) for c in itertools.product(*map(range, box))}
            norm = sum(vals.values()) + 1e-7 if normalise else 1.0
            for c, v in vals.items():
                out[(*lead, *c)] += weight[(*lead, k)].item() * v / norm
    return out


@pytest.mark.parametrize("interpolation", ["bilinear", "gaussian", "triangle"])
@pytest.mark.parametrize("box", [(9,), (7, 7), (6, 3), (5, 4, 3)])
def test_matches_reference_construction(interpolation, box):
    ref = _reference_kernel(box, interpolation)
    # The reference measures P[i] from box[i] // 2 rather than from the centre of the dimension
    # it moves along (box[M-1-i] // 2); the two agree for square boxes, shift otherwise.
    shift = torch.tensor([box[i] // 2 - box[len(box) - 1 - i] // 2 for i in range(len(box))], dtype=torch.float64)
    P = ref.P.detach() + shift.view(-1, 1, 1, 1)
    expected = ref.DCK(ref.weight, ref.P, ref.SIG)
    params = [t.detach().clone().requires_grad_(True) for t in (ref.weight, P, ref.SIG) if t is not None]
    got = construct_kernel(*params, dilated_kernel_size=box, interpolation=interpolation)
    assert got.shape == (6, 2, *box)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-10, atol=1e-12)
    # gradients too: project both kernels on one random direction and backpropagate
    direction = torch.randn_like(got)
    (expected * direction).sum().backward()
    (got * direction).sum().backward()
    for ours, theirs in zip(params, [t for t in (ref.weight, ref.P, ref.SIG) if t is not None]):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-8, atol=1e-10)


def test_matches_reference_n_md_construction():
    ref = Dcls3_1d(4, 6, 5, dense_kernel_size=(3, 2), dilated_kernel_size=7, version="gauss").double()
    expected = ref.DCK(ref.weight, ref.P, ref.SIG)
    got = construct_kernel(ref.weight, ref.P, ref.SIG, dilated_kernel_size=(7,), interpolation="gaussian")
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("box", [(8,), (5, 6), (4, 3, 5)])
def test_bicubic_matches_formula(box):
    weight = torch.randn(2, 1, 3, dtype=torch.float64)
    P = (torch.rand(len(box), 2, 1, 3, dtype=torch.float64) - 0.5) * (max(box) + 2)
    expected = _brute_force(weight, P, box, _keys, normalise=False)
    got = construct_kernel(weight, P, dilated_kernel_size=box, interpolation="bicubic")
    torch.testing.assert_close(got, expected)


@given(st.lists(st.floats(-4.0, 4.0), min_size=2, max_size=2), st.lists(st.floats(-4.0, 4.0), min_size=2, max_size=2))
def test_bilinear_matches_tent_formula(p0, p1):
    box = (7, 6)
    P = torch.tensor([p0, p1], dtype=torch.float64).view(2, 1, 1, 2)
    weight = torch.tensor([[[1.5, -0.7]]], dtype=torch.float64)
    expected = _brute_force(weight, P, box, lambda x: max(0.0, 1 - abs(x)), normalise=True)
    got = construct_kernel(weight, P, dilated_kernel_size=box)
    torch.testing.assert_close(got, expected)


def test_overlapping_elements_add():
    # Two elements at the same fractional position x = 0.25 (cells 3 and 4 of a 9 box):
    # K[3] = (w1 + w2) * 0.75, K[4] = (w1 + w2) * 0.25.
    weight = torch.tensor([[[2.0, 3.0]]])
    P = torch.full((1, 1, 1, 2), 0.25)
    kernel = construct_kernel(weight, P, dilated_kernel_size=(9,))[0, 0]
    expected = torch.zeros(9)
    expected[4], expected[5] = 5.0 * 0.75, 5.0 * 0.25
    torch.testing.assert_close(kernel, expected, rtol=1e-6, atol=1e-6)


def test_elements_at_box_limits():
    box = (4,)  # even box: centre 2, positions clamp to [-2, 2], so +2 is the cell just outside
    weight = torch.tensor([[[1.0, 1.0, 1.0]]])
    P = torch.tensor([-2.0, 1.5, 2.0]).view(1, 1, 1, 3)
    kernel = construct_kernel(weight, P, dilated_kernel_size=box)[0, 0]
    # -2 -> cell 0 exactly; 1.5 -> half on cell 3, half outside, renormalised to cell 3; 2 -> outside, vanishes.
    torch.testing.assert_close(kernel, torch.tensor([1.0, 0.0, 0.0, 1.0]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("interpolation", ["bilinear", "gaussian", "triangle", "bicubic"])
@pytest.mark.parametrize("box", [(7,), (5, 4), (3, 4, 3)])
def test_gradcheck(interpolation, box):
    torch.manual_seed(1)
    weight = torch.randn(2, 1, 3, dtype=torch.float64, requires_grad=True)
    # positions away from integers: the profiles are piecewise smooth in P
    P = (torch.randint(-2, 2, (len(box), 2, 1, 3)) + 0.2 + 0.6 * torch.rand(len(box), 2, 1, 3)).double()
    P.requires_grad_(True)
    SIG = (0.3 + torch.rand(len(box), 2, 1, 3, dtype=torch.float64)).requires_grad_(True)
    if interpolation in ("gaussian", "triangle"):
        def fn(w, p, s):
            return construct_kernel(w, p, s, dilated_kernel_size=box, interpolation=interpolation)
        assert torch.autograd.gradcheck(fn, (weight, P, SIG))
    else:
        def fn(w, p):
            return construct_kernel(w, p, dilated_kernel_size=box, interpolation=interpolation)
        assert torch.autograd.gradcheck(fn, (weight, P))
        assert torch.autograd.gradgradcheck(fn, (weight, P))


def _tent(x):
    return max(0.0, 1.0 - abs(x))


@pytest.mark.parametrize("box", [(5,), (4,), (5, 4)])
def test_bilinear_position_gradient_on_whole_cells(box):
    """On a whole cell the bilinear profile has a kink. The position's gradient is the slope from above, and on the
    box's last cell, where the slope from above is zero (the element's normalised weight stays on that cell) and where
    ``clamp_parameters()`` leaves an element that moved out, the slope from below, so that an element on either edge
    can move back in. Expected: one-sided differences of the tent formula (exact: the tent is linear on each side)."""
    torch.manual_seed(0)
    m = len(box)
    cells = list(itertools.product(*map(range, box)))  # one element on every cell
    P = torch.tensor([[c[m - 1 - i] - box[m - 1 - i] // 2 for c in cells] for i in range(m)],
                     dtype=torch.float64).view(m, 1, 1, len(cells))
    weight = torch.randn(1, 1, len(cells), dtype=torch.float64)
    direction = torch.randn(1, 1, *box, dtype=torch.float64)

    def loss(positions):
        return (_brute_force(weight, positions, box, _tent, normalise=True) * direction).sum().item()

    h = 1e-6
    expected = torch.zeros_like(P)
    for i in range(m):  # P[i] moves along box dimension m - 1 - i
        size = box[m - 1 - i]
        for k in range(len(cells)):
            step = torch.zeros_like(P)
            step[i, 0, 0, k] = h
            on_last = P[i, 0, 0, k].item() + size // 2 == size - 1
            expected[i, 0, 0, k] = (loss(P) - loss(P - step)) / h if on_last else (loss(P + step) - loss(P)) / h
    positions = P.clone().requires_grad_(True)
    kernel = construct_kernel(weight, positions, dilated_kernel_size=box)
    (kernel * direction).sum().backward()
    torch.testing.assert_close(positions.grad, expected, rtol=1e-5, atol=1e-6)


def test_scatter_memory_is_linear_in_count():
    # Bilinear construction of a 2-D kernel must not allocate count x box temporaries:
    # the largest intermediate is the dense kernel itself.
    box, pairs, count = (61, 61), 8, 64
    weight = torch.randn(pairs, 1, count, requires_grad=True)
    P = torch.randn(2, pairs, 1, count, requires_grad=True)
    with torch.profiler.profile(profile_memory=True) as prof:
        construct_kernel(weight, P, dilated_kernel_size=box).sum().backward()
    dense_bytes = pairs * math.prod(box) * 4
    largest = max(e.cpu_memory_usage for e in prof.events() if e.name.startswith("aten::"))  # single ops
    assert dense_bytes <= largest <= dense_bytes + 4096
    assert count * dense_bytes > 10 * largest  # what evaluating every element at every cell would need


def test_gaussian_memory_is_profiles_not_count_times_box():
    # Separable construction: 1-D profiles (pairs, count, size) and the dense kernel, never
    # (pairs, count, *box); in 2-D no intermediate is larger than the larger of the two.
    box, pairs, count = (61, 61), 8, 64
    weight = torch.randn(pairs, 1, count, requires_grad=True)
    P = torch.randn(2, pairs, 1, count, requires_grad=True)
    SIG = torch.rand(2, pairs, 1, count, requires_grad=True)
    with torch.profiler.profile(profile_memory=True) as prof:
        construct_kernel(weight, P, SIG, dilated_kernel_size=box, interpolation="gaussian").sum().backward()
    largest = max(e.cpu_memory_usage for e in prof.events() if e.name.startswith("aten::"))  # single ops
    bound = max(pairs * math.prod(box), pairs * count * max(box)) * 4
    assert largest <= bound + 4096
    assert count * pairs * math.prod(box) * 4 > 10 * largest


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"interpolation": "cubic"}, "interpolation"),
        ({"dilated_kernel_size": (0, 3)}, "dilated_kernel_size"),
        ({"P": torch.zeros(1, 2, 1, 3)}, "P must have shape"),
        ({"interpolation": "gaussian"}, "SIG"),
        ({"interpolation": "gaussian", "SIG": torch.zeros(2, 2, 1, 4)}, "SIG must have the shape"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"weight": torch.zeros(2, 1, 3), "P": torch.zeros(2, 2, 1, 3), "SIG": None,
            "dilated_kernel_size": (3, 3), "interpolation": "bilinear"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        construct_kernel(args.pop("weight"), args.pop("P"), args.pop("SIG"), **args)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("box", [(7,), (5, 4), (3, 4, 3)])
def test_compiled_construction_matches_eager(interpolation, box):
    """Under torch.compile the compact-support constructions run as opaque operators with a closed-form backward;
    values and gradients against eager autograd, with elements partly and wholly outside the box."""
    torch.manual_seed(2)
    weight = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    P = (torch.randn(len(box), 3, 2, 5, dtype=torch.float64) * 3).requires_grad_(True)
    direction = torch.randn(3, 2, *box, dtype=torch.float64)

    def loss(w, p):
        return (construct_kernel(w, p, dilated_kernel_size=box, interpolation=interpolation) * direction).sum()

    torch.compiler.reset()
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(weight, P), (weight, P))
    expected = torch.autograd.grad(loss(weight, P), (weight, P))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("frozen", ["weight", "P"])
def test_compiled_construction_with_frozen_weights_or_positions(frozen):
    """Frozen positions (or weights) under torch.compile (the opaque operator's backward still returns both
    gradients): the trainable one's gradient is eager's."""
    torch.manual_seed(3)
    weight = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=frozen != "weight")
    P = (torch.randn(2, 3, 2, 5, dtype=torch.float64) * 2).requires_grad_(frozen != "P")
    direction = torch.randn(3, 2, 7, 7, dtype=torch.float64)

    def loss(w, p):
        return (construct_kernel(w, p, dilated_kernel_size=(7, 7)) * direction).sum()

    trainable = P if frozen == "weight" else weight
    torch.compiler.reset()
    (got,) = torch.autograd.grad(torch.compile(loss, backend="aot_eager", fullgraph=True)(weight, P), trainable)
    (expected,) = torch.autograd.grad(loss(weight, P), trainable)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
