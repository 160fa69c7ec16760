import os

import pytest
import torch
from hypothesis import settings

# Property tests run many small convolutions; wall-clock deadlines only add flakiness.
settings.register_profile("largekernel", deadline=None, max_examples=40, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "largekernel"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
