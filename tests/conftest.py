"""Test-wide settings: no model hub (a pretrained download fails in 0.1 s instead of 46 s)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: extra threads only add overhead (and contention on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
