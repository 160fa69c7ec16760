"""The embedded datasets at other resolutions: MNIST-1D at any length, the digits at any size (the study's sweep)."""

import numpy as np
import pytest
import torch

from largekernel.data import dataset_info, load_dataset
from largekernel.data.datasets import _mnist1d_arrays


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LARGEKERNEL_CACHE", str(tmp_path))
    _mnist1d_arrays.cache_clear()
    yield tmp_path
    _mnist1d_arrays.cache_clear()


def test_mnist1d_lengths_are_the_packages_generator_at_that_length(cache):
    from mnist1d.data import get_dataset_args, make_dataset

    base = load_dataset("mnist1d", "train")
    length = 160
    train, test = load_dataset("mnist1d", "train", length=length), load_dataset("mnist1d", "test", length=length)
    assert train.x.shape == (4000, 1, length) and test.x.shape == (1000, 1, length)
    assert train.x.dtype == torch.float32 and train.info == dataset_info("mnist1d", length=length)
    assert train.info.input_size == (length,) and dataset_info("mnist1d", length=640).input_size == (640,)
    # the same digits in the same order: the generator draws every random number before its final resampling
    assert torch.equal(train.y, base.y) and torch.equal(test.y, load_dataset("mnist1d", "test").y)
    args = get_dataset_args()
    args.final_seq_length = length
    reference = make_dataset(args)  # the published generator itself
    np.testing.assert_array_equal(train.x[:, 0].numpy(), reference["x"].astype(np.float32))
    np.testing.assert_array_equal(test.x[:, 0].numpy(), reference["x_test"].astype(np.float32))
    # balanced classes: 500 samples per class were generated, 4000 of the 5000 shuffled into the training split
    counts = np.bincount(base.y.numpy(), minlength=10)
    assert counts.sum() == 4000 and counts.min() >= 380 and counts.max() <= 420
    # deterministic: a fresh process (no in-memory copy) reads the same arrays back from the cache
    first = load_dataset("mnist1d", "train", length=160).x.clone()
    _mnist1d_arrays.cache_clear()
    assert torch.equal(load_dataset("mnist1d", "train", length=160).x, first)
    assert sorted(p.name.split("seed42")[1] for p in cache.iterdir()) == ["-len160.npz", ".npz"]


def test_digits_sizes_are_bilinear_resamplings(cache):
    from PIL import Image

    small = load_dataset("digits", "test")
    big = load_dataset("digits", "test", size=32)
    assert big.x.shape == (450, 1, 32, 32) and big.info == dataset_info("digits", size=32)
    assert torch.equal(big.y, small.y)
    # Pillow's bilinear resize (half-pixel centres, as torch's align_corners=False) of the same 8x8 images
    for i in (0, 17, 449):
        image = Image.fromarray(small.x[i, 0].numpy(), mode="F").resize((32, 32), Image.BILINEAR)
        np.testing.assert_allclose(big.x[i, 0].numpy(), np.asarray(image), rtol=1e-5, atol=1e-5)
    # every class keeps its share (the split is stratified, the labels are those of the 8x8 images)
    full = np.bincount(load_dataset("digits", "train", size=32).y.numpy(), minlength=10)
    assert full.min() >= 130 and full.max() <= 140
    assert torch.equal(load_dataset("digits", "test", size=32).x, big.x)  # deterministic
    seq = load_dataset("digits_seq", "test", size=16)
    assert seq.x.shape == (450, 1, 256) and dataset_info("digits_seq", size=16).input_size == (256,)
    assert torch.equal(seq.x, load_dataset("digits", "test", size=16).x.flatten(2))
    assert dataset_info("digits").input_size == (8, 8)  # the default is untouched


@pytest.mark.parametrize("name,kwargs", [("mnist1d", {"length": 1}), ("mnist1d", {"length": 40.0}),
                                         ("digits", {"size": 0}), ("digits", {"size": "32"})])
def test_bad_resolution_is_refused(name, kwargs):
    key, value = next(iter(kwargs.items()))
    with pytest.raises(ValueError, match=f"{key} must be an int .*got {value!r}"):
        load_dataset(name, "train", **kwargs)
    with pytest.raises(ValueError, match=key):
        dataset_info(name, **kwargs)
