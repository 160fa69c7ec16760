"""Datasets and batched tensor transforms (no torchvision): MNIST-1D, digits, CIFAR, MNIST IDX, ImageFolder."""

from largekernel.data.datasets import (
    DatasetFormatError,
    DatasetInfo,
    ImageFolderDataset,
    TensorDataset,
    dataset_info,
    list_datasets,
    load_dataset,
    needs_data_dir,
)
from largekernel.data.randaugment import rand_augment
from largekernel.data.transforms import (
    Normalize,
    mixup_cutmix,
    one_hot,
    random_crop,
    random_erasing,
    random_flip,
    random_resized_crop,
)

__all__ = [
    "DatasetFormatError", "DatasetInfo", "ImageFolderDataset", "TensorDataset", "dataset_info", "list_datasets",
    "load_dataset", "needs_data_dir", "Normalize", "mixup_cutmix", "one_hot", "random_crop", "random_erasing", "random_flip",
    "random_resized_crop", "rand_augment",
]
