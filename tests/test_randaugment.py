"""RandAugment (largekernel.data.randaugment) against Pillow, op by op, and the sampling of rand_augment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from largekernel.data.randaugment import OPS, apply_op, rand_augment

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 1e-5
FILL = 128  # PIL fillcolor level, fill=128/255 for apply_op
LEVELS = (-9.0, 3.5, 10.0)  # a different signed level per sample in one call


def _factor(level: float) -> float:
    return max(0.1, 1.0 + level / 10 * 0.9)  # timm's _enhance_increasing_level_to_arg


def _solarize_add(img: Image.Image, level: float) -> Image.Image:
    # timm's solarize_add LUT as a numpy formula: levels below 128 get + int(|level| / 10 * 110), clipped at 255.
    a = np.asarray(img).astype(np.int64)
    add = int(abs(level) / 10 * 110)
    return Image.fromarray(np.where(a < 128, np.minimum(a + add, 255), a).astype(np.uint8))


def _posterize(img: Image.Image, bits: int) -> Image.Image:
    if bits == 0:
        # Magnitude 10 keeps 0 bits. Pillow >= 9 rejects bits=0 in ImageOps.posterize; its former LUT
        # (i & ~(2 ** (8 - bits) - 1), what timm ran on) maps every level to 0.
        return Image.fromarray(np.zeros_like(np.asarray(img)))
    return ImageOps.posterize(img, bits)


def _affine(img: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    fill = FILL if img.mode == "L" else (FILL,) * 3
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=fill)


def _rotate(img: Image.Image, level: float) -> Image.Image:
    fill = FILL if img.mode == "L" else (FILL,) * 3
    return img.rotate(level / 10 * 30, resample=Image.BILINEAR, fillcolor=fill)


# op name -> (PIL / numpy reference (image, signed level) -> image, max abs difference in 1/255 units)
REFERENCES = {
    # AutoContrast: PIL truncates its LUT (int(i * scale + offset)); ours is the exact stretch: < 1 level.
    "AutoContrast": (lambda im, l: ImageOps.autocontrast(im), 1.0),
    "Equalize": (lambda im, l: ImageOps.equalize(im), 0.0),
    "Invert": (lambda im, l: ImageOps.invert(im), 0.0),
    "PosterizeIncreasing": (lambda im, l: _posterize(im, 4 - int(abs(l) / 10 * 4)), 0.0),
    "SolarizeIncreasing": (lambda im, l: ImageOps.solarize(im, 256 - int(abs(l) / 10 * 256)), 0.0),
    "SolarizeAdd": (_solarize_add, 0.0),
    # The enhance ops: PIL's blend truncates to uint8 (< 1 level) and its degenerate image is itself rounded to
    # uint8 (the luma of convert("L"), the rounded mean for Contrast, the SMOOTH filter), an error up to 0.5 level
    # scaled by |1 - factor| <= 0.9: < 1.45 levels in all (measured: Color 1.39, Contrast 1.24, Sharpness 1.36).
    "ColorIncreasing": (lambda im, l: ImageEnhance.Color(im).enhance(_factor(l)), 1.5),
    "ContrastIncreasing": (lambda im, l: ImageEnhance.Contrast(im).enhance(_factor(l)), 1.5),
    "BrightnessIncreasing": (lambda im, l: ImageEnhance.Brightness(im).enhance(_factor(l)), 1.0),
    "SharpnessIncreasing": (lambda im, l: ImageEnhance.Sharpness(im).enhance(_factor(l)), 1.5),
    # Geometric ops reproduce PIL's bilinear filter (fill outside, edge-clamped neighbours inside); PIL rounds the
    # interpolated value to uint8: measured max 1.0007 levels, borders and fill included.
    "Rotate": (_rotate, 1.01),
    "ShearX": (lambda im, l: _affine(im, (1, l / 10 * 0.3, 0, 0, 1, 0)), 1.01),
    "ShearY": (lambda im, l: _affine(im, (1, 0, 0, l / 10 * 0.3, 1, 0)), 1.01),
    "TranslateXRel": (lambda im, l: _affine(im, (1, 0, l / 10 * 0.45 * im.size[0], 0, 1, 0)), 1.01),
    "TranslateYRel": (lambda im, l: _affine(im, (1, 0, 0, 0, 1, l / 10 * 0.45 * im.size[1])), 1.01),
}


def _images(channels: int, height: int = 17, width: int = 13, seed: int = 0) -> np.ndarray:
    """Three uint8 images (3, H, W[, 3]): a full-range one and two of narrower, skewed ranges (so that
    AutoContrast and Equalize have work to do)."""
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, 3)
    full = rng.integers(0, 256, shape)
    narrow = rng.integers(40, 180, shape)
    skewed = (rng.beta(2.0, 5.0, shape) * 200 + 30).astype(np.int64)
    return np.stack([full, narrow, skewed]).astype(np.uint8)


def _to_tensor(arrs: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(arrs)).float() / 255
    return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)


def _pil_reference(name: str, arrs: np.ndarray, levels) -> torch.Tensor:
    ref = REFERENCES[name][0]
    return _to_tensor(np.stack([np.asarray(ref(Image.fromarray(a), l)) for a, l in zip(arrs, levels)]))


def test_ops_cover_timm_increasing_transforms():
    assert OPS == ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                   "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                   "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
    assert set(REFERENCES) == set(OPS)


@pytest.mark.parametrize("size", [(17, 13), (40, 33)])  # 17x13 has too few pixels for PIL's equalize to act
@pytest.mark.parametrize("name", OPS)
def test_op_matches_pil_rgb(name, size):
    arrs = _images(3, *size)
    x = _to_tensor(arrs)
    y = apply_op(x, name, torch.tensor(LEVELS), fill=FILL / 255)
    expected = _pil_reference(name, arrs, LEVELS)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert (y - expected).abs().max().item() <= REFERENCES[name][1] / 255 + EPS


@pytest.mark.parametrize("name", [n for n in OPS if n != "ColorIncreasing"])
def test_op_matches_pil_gray(name):
    arrs = _images(1, 40, 33, seed=1)
    x = _to_tensor(arrs)
    y = apply_op(x, name, torch.tensor(LEVELS), fill=FILL / 255)
    expected = _pil_reference(name, arrs, LEVELS)
    assert y.shape == x.shape == (3, 1, 40, 33)
    assert (y - expected).abs().max().item() <= REFERENCES[name][1] / 255 + EPS


def test_color_is_identity_on_gray_images():
    x = _to_tensor(_images(1))
    torch.testing.assert_close(apply_op(x, "ColorIncreasing", torch.tensor(LEVELS)), x, rtol=0, atol=0)


def test_equalize_changes_large_images():
    # Guards the PIL comparison against a vacuous pass: on 40x33 images equalize and autocontrast act.
    x = _to_tensor(_images(3, 40, 33))
    assert (apply_op(x, "Equalize", 0.0)[1:] - x[1:]).abs().amax(dim=(1, 2, 3)).min() > 0.05
    assert (apply_op(x, "AutoContrast", 0.0)[1:] - x[1:]).abs().amax(dim=(1, 2, 3)).min() > 0.05


def test_autocontrast_leaves_constant_channel():
    x = torch.rand(2, 3, 5, 6)
    x[0, 1] = 0.3
    y = apply_op(x, "AutoContrast", 0.0)
    torch.testing.assert_close(y[0, 1], x[0, 1], rtol=0, atol=0)
    assert y[1].amin(dim=(1, 2)).abs().max() < EPS and (y[1].amax(dim=(1, 2)) - 1).abs().max() < EPS


@pytest.mark.parametrize("name", ["TranslateXRel", "TranslateYRel"])
def test_integer_translation_is_exact(name):
    arrs = _images(3, 17, 13)
    x = _to_tensor(arrs)
    axis_size = 13 if name == "TranslateXRel" else 17
    pixels = np.array([-4, 3, 5])
    levels = torch.tensor(pixels * 10 / (0.45 * axis_size), dtype=torch.float64)  # integer pixel shifts
    y = apply_op(x, name, levels, fill=FILL / 255)
    for i, (a, p) in enumerate(zip(arrs, pixels.tolist())):
        matrix = (1, 0, p, 0, 1, 0) if name == "TranslateXRel" else (1, 0, 0, 0, 1, p)
        img = Image.fromarray(a)
        nearest = img.transform(img.size, Image.AFFINE, matrix, resample=Image.NEAREST, fillcolor=(FILL,) * 3)
        torch.testing.assert_close(y[i], _to_tensor(np.asarray(nearest)[None])[0], rtol=0, atol=1e-6)
        # And in numpy: output pixel j reads input pixel j + p (the content moves by -p), outside is fill.
        out = np.full_like(a, FILL)
        if name == "TranslateXRel":
            src = np.arange(13) + p
            ok = (src >= 0) & (src < 13)
            out[:, ok] = a[:, src[ok]]
        else:
            src = np.arange(17) + p
            ok = (src >= 0) & (src < 17)
            out[ok] = a[src[ok]]
        torch.testing.assert_close(y[i], _to_tensor(out[None])[0], rtol=0, atol=1e-6)


def _bright_spot(height: int, width: int, row: int, col: int) -> np.ndarray:
    a = np.zeros((height, width, 3), np.uint8)
    a[row - 1:row + 2, col - 1:col + 2] = 255  # a 3x3 spot survives bilinear resampling as the argmax
    return a


def _argmax(img: torch.Tensor | np.ndarray) -> tuple[int, int]:
    t = torch.as_tensor(np.asarray(img).copy(), dtype=torch.float32)
    if t.dim() == 3 and t.shape[0] == 3:
        t = t.sum(0)
    elif t.dim() == 3:
        t = t.sum(-1)
    flat = int(t.flatten().argmax())
    return divmod(flat, t.shape[-1])


@pytest.mark.parametrize("level", [10.0, -10.0])
def test_rotation_direction_matches_pil(level):
    a = _bright_spot(33, 33, 16, 26)  # right of the centre
    y = apply_op(_to_tensor(a[None]), "Rotate", torch.tensor([level]), fill=0.0)[0]
    ref = Image.fromarray(a).rotate(level / 10 * 30, resample=Image.BILINEAR)
    row, col = _argmax(y)
    assert (row, col) == _argmax(ref)
    # Positive degrees turn counter-clockwise on screen: the spot right of the centre moves up (row decreases).
    assert (row < 16) == (level > 0)


@pytest.mark.parametrize("name", ["ShearX", "ShearY"])
@pytest.mark.parametrize("level", [10.0, -10.0])
def test_shear_direction_matches_pil(name, level):
    a = _bright_spot(33, 33, 26, 24)
    s = level / 10 * 0.3
    matrix = (1, s, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, s, 1, 0)
    img = Image.fromarray(a)
    ref = img.transform(img.size, Image.AFFINE, matrix, resample=Image.BILINEAR)
    y = apply_op(_to_tensor(a[None]), name, torch.tensor([level]), fill=0.0)[0]
    assert _argmax(y) == _argmax(ref) != (26, 24)
    # PIL reads output (x, y) from input (x + s y, y) (ShearX): the spot (below / right of the origin) moves left
    # for s > 0, right for s < 0; ShearY moves it up for s > 0.
    row, col = _argmax(y)
    if name == "ShearX":
        assert abs(row - 26) <= 1 and (col < 24 - 3) == (level > 0) and (col > 24 + 3) == (level < 0)
    else:
        assert abs(col - 24) <= 1 and (row < 26 - 3) == (level > 0) and (row > 26 + 3) == (level < 0)


def test_level_zero_geometric_ops_are_identity():
    x = _to_tensor(_images(3))
    for name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
        torch.testing.assert_close(apply_op(x, name, 0.0), x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_are_preserved(dtype):
    x = _to_tensor(_images(3)).to(dtype)
    for name in OPS:
        y = apply_op(x, name, torch.tensor(LEVELS))
        assert y.dtype == dtype and y.shape == x.shape
    y = rand_augment(x, generator=torch.Generator().manual_seed(0))
    assert y.dtype == dtype and y.shape == x.shape and 0 <= y.min() and y.max() <= 1


def test_rand_augment_is_reproducible():
    x = torch.rand(16, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    y1 = rand_augment(x, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global RNG plays no part
    y2 = rand_augment(x, generator=torch.Generator().manual_seed(7))
    y3 = rand_augment(x, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    assert not torch.equal(y1, y3)
    assert y1.shape == x.shape and y1.dtype == x.dtype and 0 <= y1.min() and y1.max() <= 1


def test_rand_augment_num_ops_zero_returns_input():
    x = torch.rand(4, 1, 8, 8)
    assert rand_augment(x, num_ops=0, generator=torch.Generator().manual_seed(0)) is x


def test_rand_augment_samples_independently():
    # 64 copies of one image: each draws its own ops, magnitudes, signs and whether to apply them.
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(2)).mul(0.6).add(0.2).expand(64, -1, -1, -1)
    y = rand_augment(x, num_ops=1, magnitude=9.0, magnitude_std=0.5, generator=torch.Generator().manual_seed(3))
    distinct = torch.unique(y.flatten(1), dim=0).shape[0]
    assert distinct > 10
    unchanged = (y == x).flatten(1).all(dim=1).sum().item()  # op skipped with probability 1/2
    assert 16 <= unchanged <= 48
    assert 0 <= y.min() and y.max() <= 1


def test_rand_augment_applies_op_level_pairs():
    # With magnitude_std = 0 every output is its input, or one op of OPS at level +-magnitude applied to it.
    x = _to_tensor(_images(3, 9, 7).repeat(8, axis=0))  # (24, 3, 9, 7)
    y = rand_augment(x, num_ops=1, magnitude=7.0, magnitude_std=0.0, generator=torch.Generator().manual_seed(4))
    candidates = [x] + [apply_op(x, name, sign * 7.0) for name in OPS for sign in (1.0, -1.0)]
    candidates = torch.stack(candidates)  # (31, N, C, H, W)
    err = (candidates - y).abs().flatten(2).amax(dim=2)  # (31, N)
    assert (err.min(dim=0).values < 1e-6).all()
    assert (err.argmin(dim=0) > 0).sum() >= 4  # several samples were augmented, by several ops
    assert torch.unique(err.argmin(dim=0)).numel() >= 4


def test_rand_augment_uniform_magnitude_and_gray():
    x = torch.rand(8, 1, 10, 10)
    y = rand_augment(x, num_ops=3, magnitude=9.0, magnitude_std=float("inf"),
                     generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1


@pytest.mark.parametrize("kwargs, argument", [
    (dict(num_ops=-1), "num_ops"),
    (dict(num_ops=1.5), "num_ops"),
    (dict(magnitude=11.0), "magnitude"),
    (dict(magnitude=-0.5), "magnitude"),
    (dict(magnitude_std=-0.1), "magnitude_std"),
    (dict(max_magnitude=0.0), "max_magnitude"),
    (dict(fill=2.0), "fill"),
])
def test_rand_augment_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"^{argument} "):
        rand_augment(torch.rand(2, 3, 4, 4), **kwargs)


@pytest.mark.parametrize("x", [torch.rand(3, 4, 4), torch.rand(2, 2, 4, 4), torch.rand(2, 4, 4, 4),
                               torch.randint(0, 255, (2, 3, 4, 4))])
def test_bad_images_are_rejected(x):
    with pytest.raises(ValueError, match="^x must be"):
        rand_augment(x)
    with pytest.raises(ValueError, match="^x must be"):
        apply_op(x, "Invert", 0.0)


def test_apply_op_rejects_bad_name_and_magnitude():
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="^name must be one of"):
        apply_op(x, "Cutout", torch.zeros(2))
    with pytest.raises(ValueError, match="^magnitude must be"):
        apply_op(x, "Rotate", torch.zeros(3))
