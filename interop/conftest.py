"""Interop tests: largekernel on real timm and torchvision models and with timm's training tools.

They need ``pip install largekernel[timm]`` (timm, torchvision) and run apart from the main suite
(``python -m pytest -q interop``; CI runs them in their own venv with torch 2.14.1). Models are
built with ``pretrained=False`` and run on small inputs: nothing is downloaded.
"""

import warnings

import pytest
import torch

# Imported here so that a missing dependency fails the whole run at collection, not test by test.
import timm  # noqa: F401
import torchvision  # noqa: F401

from largekernel.functional import set_calibration

# backend="auto" picks each call's path from the cost model alone, without timing both paths: these tests
# check results, not speed, and on a shared 2-core machine the timing is what would cost the minutes.
set_calibration(False)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _quiet_conversions():
    # convert() warns about the layers it skips; the tests read the report instead.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"convert\(to=")
        yield
