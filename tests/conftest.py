"""Test-wide settings: no model hub (a pretrained download fails in 0.1 s instead of 46 s)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
