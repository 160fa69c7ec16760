"""largekernel.data: loaders on files written in the published formats, bad files, batched augmentations."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from largekernel.data import (
    DatasetFormatError,
    Normalize,
    dataset_info,
    list_datasets,
    load_dataset,
    mixup_cutmix,
    one_hot,
    random_crop,
    random_flip,
)
from largekernel.data.datasets import _mnist1d_arrays
from largekernel.data.transforms import random_erasing, random_resized_crop, resized_crop_boxes

# --------------------------------------------------------------------------- embedded datasets


def test_mnist1d_is_generated_locally_with_published_split(tmp_path, monkeypatch):
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError("MNIST-1D must not be downloaded")

    monkeypatch.setattr(requests, "get", no_network)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LARGEKERNEL_CACHE", str(tmp_path / "cache"))
    _mnist1d_arrays.cache_clear()
    state = np.random.get_state()
    train, test = load_dataset("mnist1d", "train"), load_dataset("mnist1d", "test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # nothing written to the working directory
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npz"
    assert np.array_equal(np.random.get_state()[1], state[1])  # the generator's reseeding does not leak
    assert (len(train), len(test)) == (4000, 1000)
    x, y = train[0]
    assert x.shape == (1, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(train.y.tolist()) == set(range(10))
    # the package standardises the whole set: mean 0, std 1 (train and test together)
    allx = torch.cat([train.x, test.x])
    assert abs(allx.mean().item()) < 1e-3 and abs(allx.std().item() - 1) < 1e-3
    assert dataset_info("mnist1d") == train.info
    assert torch.equal(load_dataset("mnist1d_seq", "train").x, train.x)
    # the published generator with its default seed: compare with the package's own output
    from mnist1d.data import get_dataset_args, make_dataset

    reference = make_dataset(get_dataset_args())
    assert np.array_equal(train.x[:, 0].numpy(), reference["x"].astype(np.float32))
    assert np.array_equal(test.y.numpy(), reference["y_test"])
    _mnist1d_arrays.cache_clear()  # reload from the .npz cache: same data
    assert torch.equal(load_dataset("mnist1d", "train").x, train.x)


def test_digits_layouts_and_stratified_split():
    from sklearn.datasets import load_digits

    img_tr, img_te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(img_tr), len(img_te)) == (1347, 450)
    assert img_tr[0][0].shape == (1, 8, 8)
    # stratified: each class's share of the test set matches its share of the whole data to one sample
    full = np.bincount(load_digits().target, minlength=10)
    test_counts = np.bincount(img_te.y.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - full * 450 / full.sum()) <= 1)
    seq, pseq = load_dataset("digits_seq", "train"), load_dataset("digits_pseq", "train")
    assert seq.x.shape == (1347, 1, 64) and torch.equal(seq.x, img_tr.x.flatten(2))
    # one fixed permutation of the 64 positions, shared by all samples: every permuted column is a column
    # of the flattened images and every sample keeps its values
    a, b = seq.x[:, 0, :], pseq.x[:, 0, :]
    assert all(bool((a == b[:, j:j + 1]).all(0).any()) for j in range(64))
    assert torch.equal(a.sort(-1).values, b.sort(-1).values) and not torch.equal(a, b)
    assert dataset_info("digits_pseq").input_size == (64,) and dataset_info("digits").dims == 2


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="dataset must be one of.*'nope'"):
        load_dataset("nope")
    with pytest.raises(ValueError, match="split must be one of.*'val'"):
        load_dataset("digits", "val")
    with pytest.raises(ValueError, match="data_dir is required"):
        load_dataset("cifar10", "train")
    assert {"mnist1d", "digits", "cifar10", "cifar100", "imagefolder", "mnist", "fashion_mnist"} <= set(list_datasets())


# --------------------------------------------------------------------------- CIFAR pickle batches


def _write_cifar_batch(path, n, rng, label_key=b"labels", num_classes=10):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).tolist()
    batch = {b"batch_label": b"x", label_key: labels, b"data": data, b"filenames": [b"f"] * n}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [0] * n
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return data, labels


def test_cifar10_pickle_batches(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    parts = [_write_cifar_batch(root / f"data_batch_{i}", 3, rng) for i in range(1, 6)]
    test_data, test_labels = _write_cifar_batch(root / "test_batch", 4, rng)
    train = load_dataset("cifar10", "train", tmp_path)
    test = load_dataset("cifar10", "test", tmp_path)
    assert (len(train), len(test)) == (15, 4)
    assert train.y.tolist() == sum((p[1] for p in parts), [])
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    x, y = test[2]
    assert x.shape == (3, 32, 32) and int(y) == test_labels[2]
    # CIFAR rows store the red plane, then green, then blue, each 32x32 row-major
    for c, h, w in [(0, 0, 0), (1, 5, 7), (2, 31, 30)]:
        expected = (test_data[2, c * 1024 + h * 32 + w] / 255.0 - mean[c]) / std[c]
        assert x[c, h, w].item() == pytest.approx(expected, abs=1e-5)
    assert dataset_info("cifar10").num_classes == 10


def test_cifar100_pickle_batches(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    _, train_labels = _write_cifar_batch(root / "train", 6, rng, b"fine_labels", 100)
    _write_cifar_batch(root / "test", 2, rng, b"fine_labels", 100)
    train = load_dataset("cifar100", "train", tmp_path)
    assert train.y.tolist() == train_labels and train.info.num_classes == 100
    assert len(load_dataset("cifar100", "test", tmp_path)) == 2


def test_cifar_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"data_batch_1: file not found; expected a CIFAR python pickle"):
        load_dataset("cifar10", "train", tmp_path)
    (tmp_path / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(DatasetFormatError, match=r"test_batch: cannot read .*expected a CIFAR"):
        load_dataset("cifar10", "test", tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DatasetFormatError, match=r"test_batch: data of shape \(2, 100\)"):
        load_dataset("cifar10", "test", tmp_path)


# --------------------------------------------------------------------------- MNIST IDX


def _write_idx(path, array, gz=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("name,gz", [("mnist", False), ("fashion_mnist", True)])
def test_mnist_idx_files(tmp_path, name, gz):
    rng = np.random.default_rng(2)
    suffix = ".gz" if gz else ""
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    ds = load_dataset(name, "train", tmp_path)
    mean, std = (0.1307, 0.3081) if name == "mnist" else (0.2860, 0.3530)
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and int(y) == labels[3]
    torch.testing.assert_close(x[0], torch.from_numpy((images[3] / 255.0 - mean) / std).float())


def test_mnist_idx_bad_files(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"t10k-images-idx3-ubyte: file not found; expected an IDX3"):
        load_dataset("mnist", "test", tmp_path)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DatasetFormatError, match=r"t10k-labels-idx1-ubyte: bad magic number 00000803"):
        load_dataset("mnist", "test", tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3))
    with pytest.raises(DatasetFormatError, match=r"3 labels for 2 images"):
        load_dataset("mnist", "test", tmp_path)
    raw = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:-10])
    with pytest.raises(DatasetFormatError, match=r"t10k-images-idx3-ubyte: 1558 data bytes for shape \(2, 28, 28\)"):
        load_dataset("mnist", "test", tmp_path)


# --------------------------------------------------------------------------- ImageFolder


def _write_tree(root, split, classes, size=(12, 10)):
    from PIL import Image

    colours = {}
    for i, name in enumerate(classes):
        (root / split / name).mkdir(parents=True)
        for j in range(2):
            colour = (20 * i + j, 100, 200 - 10 * i)
            Image.new("RGB", size, colour).save(root / split / name / f"{j}.png")
            colours[(name, j)] = colour
    return colours


def test_imagefolder_tree(tmp_path):
    colours = _write_tree(tmp_path, "train", ["cat", "ant", "bee"])
    _write_tree(tmp_path, "val", ["bee", "cat"])  # a class missing from val keeps the train labels
    train = load_dataset("imagefolder", "train", tmp_path, image_size=8)
    val = load_dataset("imagefolder", "test", tmp_path, image_size=8)
    assert train.classes == ["ant", "bee", "cat"] and len(train) == 6
    assert sorted(set(int(val[i][1]) for i in range(len(val)))) == [1, 2]
    x, y = train[5]  # "cat", second image
    assert x.shape == (3, 8, 8) and int(y) == 2
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    colour = colours[("cat", 1)]
    for c in range(3):
        torch.testing.assert_close(x[c], torch.full((8, 8), (colour[c] / 255 - mean[c]) / std[c]))
    assert dataset_info("imagefolder", tmp_path, image_size=8).num_classes == 3


def test_imagefolder_bad_inputs(tmp_path):
    with pytest.raises(DatasetFormatError, match="train: directory not found"):
        load_dataset("imagefolder", "train", tmp_path)
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetFormatError, match="no images with extensions"):
        load_dataset("imagefolder", "train", tmp_path)
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    ds = load_dataset("imagefolder", "train", tmp_path)
    with pytest.raises(DatasetFormatError, match=r"broken.png: cannot decode image .*expected a PNG/JPEG"):
        ds[0]


# --------------------------------------------------------------------------- transforms


def test_normalize_formula():
    x = torch.rand(4, 3, 5, 5)
    out = Normalize((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))(x)
    for c, (m, s) in enumerate(zip((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))):
        torch.testing.assert_close(out[:, c], (x[:, c] - m) / s)
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize((0.0,), (0.0,))


@pytest.mark.parametrize("shape", [(6, 2, 9), (6, 3, 5, 7)])
def test_random_crop_is_a_crop_of_the_padded_input(shape):
    x = torch.randn(shape)
    pad = 2
    out = random_crop(x, pad, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = F.pad(x, [pad] * (2 * (x.dim() - 2)))
    offsets = [(i,) for i in range(2 * pad + 1)] if x.dim() == 3 else \
        [(i, j) for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    seen = set()
    for n in range(shape[0]):
        matches = [o for o in offsets
                   if torch.equal(out[n], padded[(n, slice(None)) + tuple(slice(a, a + s) for a, s in zip(o, shape[2:]))])]
        assert matches, f"sample {n} is not a crop of the padded input"
        seen.add(matches[0])
    assert len(seen) > 1  # offsets differ between samples
    assert random_crop(x, 0) is x


def test_random_flip():
    x = torch.randn(16, 2, 4, 5)
    out = random_flip(x, 0.5, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[n], x[n].flip(-1)) for n in range(16)]
    assert all(f or torch.equal(out[n], x[n]) for n, f in enumerate(flipped))
    assert 0 < sum(flipped) < 16
    assert torch.equal(random_flip(x, 1.0), x.flip(-1))
    with pytest.raises(ValueError, match="p must be in"):
        random_flip(x, 1.5)


def test_normalize_inverse_roundtrip():
    norm = Normalize((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    x = torch.rand(2, 3, 4, 5)
    torch.testing.assert_close(norm.inverse(norm(x)), x)


def test_resized_crop_boxes_follow_torchvision_rules():
    n, (height, width) = 400, (30, 40)
    boxes = resized_crop_boxes(n, (height, width), (0.1, 0.6), (0.5, 2.0), torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T
    assert ((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width) & (h > 0) & (w > 0)).all()
    # Area and aspect ratio in range up to the rounding of h and w to integers.
    area = (h * w).double() / (height * width)
    assert (area >= 0.1 * 0.85).all() and (area <= 0.6 * 1.15).all()
    aspect = w.double() / h
    assert (aspect >= 0.5 * 0.8).all() and (aspect <= 2.0 * 1.25).all()
    assert len(set(map(tuple, boxes.tolist()))) > n // 2  # drawn per sample
    # Nothing fits (area fraction above 1): the centre crop, cut to the nearest allowed aspect ratio.
    fallback = resized_crop_boxes(3, (10, 40), (2.0, 3.0), (3 / 4, 4 / 3))
    assert fallback.tolist() == [[0, 13, 10, 13]] * 3  # w = round(10 * 4/3), left = (40 - 13) // 2
    with pytest.raises(ValueError, match="scale must be"):
        resized_crop_boxes(1, (8, 8), (0.5, 0.1))


def test_random_resized_crop_is_crop_then_bilinear_resize():
    x = torch.randn(6, 3, 32, 28)
    out = random_resized_crop(x, (0.5, 1.0), size=(12, 10), generator=torch.Generator().manual_seed(1))
    boxes = resized_crop_boxes(6, (32, 28), (0.5, 1.0), generator=torch.Generator().manual_seed(1))
    assert out.shape == (6, 3, 12, 10)
    for i, (t, l, h, w) in enumerate(boxes.tolist()):  # every crop is larger than the output: no border clamping
        expected = F.interpolate(x[i:i + 1, :, t:t + h, l:l + w], size=(12, 10), mode="bilinear", align_corners=False)
        torch.testing.assert_close(out[i:i + 1], expected, rtol=1e-5, atol=1e-5)
    assert random_resized_crop(x).shape == x.shape
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        random_resized_crop(torch.randn(2, 3, 8))


def test_random_erasing_fills_one_box_with_noise():
    x = torch.full((200, 3, 20, 30), 100.0)
    out = random_erasing(x, 1.0, generator=torch.Generator().manual_seed(2))
    changed = out != 100.0  # noise is never exactly 100
    erased = 0
    for i in range(200):
        if not changed[i].any():
            continue  # no draw fitted (rare)
        erased += 1
        rows, cols = changed[i].any(dim=(0, 2)).nonzero().flatten(), changed[i].any(dim=(0, 1)).nonzero().flatten()
        box = changed[i][:, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert box.all() and changed[i].sum() == box.numel()  # one full rectangle, all channels
        assert 0.02 * 0.7 <= box[0].numel() / 600 <= (1 / 3) * 1.3
    assert erased > 190
    noise = out[changed]
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1.0) < 0.05
    kept = random_erasing(x, 0.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(kept, x)
    some = random_erasing(x, 0.25, generator=torch.Generator().manual_seed(3))
    assert 0.15 < (some != x).flatten(1).any(1).float().mean().item() < 0.35
    with pytest.raises(ValueError, match="p must be in"):
        random_erasing(x, -0.1)


def test_one_hot_smoothing_matches_torch_cross_entropy():
    logits, y = torch.randn(5, 7), torch.randint(0, 7, (5,))
    soft = one_hot(y, 7, 0.1)
    torch.testing.assert_close(F.cross_entropy(logits, soft), F.cross_entropy(logits, y, label_smoothing=0.1))


def test_mixup_blends_with_reversed_batch():
    x, y = torch.randn(8, 1, 12), torch.arange(8) % 4
    out, t = mixup_cutmix(x, y, 4, mixup_alpha=0.4, generator=torch.Generator().manual_seed(3))
    lam = t[0, y[0]].item() if y[0] != y[-1] else None
    assert lam is not None
    torch.testing.assert_close(out, lam * x + (1 - lam) * x.flip(0))
    torch.testing.assert_close(t.sum(1), torch.ones(8))


def test_cutmix_pastes_a_box_with_matching_label_weight():
    x = torch.zeros(4, 1, 16, 16)
    x[1::2] = 1.0  # reversed batch differs everywhere from each sample
    y = torch.tensor([0, 1, 2, 3])
    out, t = mixup_cutmix(x, y, 4, cutmix_alpha=1.0, generator=torch.Generator().manual_seed(5))
    pasted = (out[0] != x[0]).float().mean().item()  # fraction of sample 0 taken from sample 3
    assert 0 < pasted < 1
    assert t[0, 0].item() == pytest.approx(1 - pasted) and t[0, 3].item() == pytest.approx(pasted)
    with pytest.raises(ValueError, match="cutmix_alpha must be >= 0"):
        mixup_cutmix(x, y, 4, cutmix_alpha=-1.0)
