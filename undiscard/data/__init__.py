"""Data: Fashion-MNIST (full set from the Debian package, bundled test set), shifts, preprocessing."""
from .fashion_mnist import (
    BUNDLED_TEST,
    CLASS_NAMES,
    DEBIAN_ROOT,
    MEAN,
    NUM_CLASSES,
    STD,
    has_idx_files,
    load_fashion_mnist,
    load_train_val,
    read_idx,
    train_val_split,
    write_idx,
)
from .preprocess import normalize, preprocess, resize, to_float
from .shift import random_offsets, shift_images, translate

__all__ = [
    "BUNDLED_TEST", "CLASS_NAMES", "DEBIAN_ROOT", "MEAN", "NUM_CLASSES", "STD",
    "has_idx_files", "load_fashion_mnist", "load_train_val", "read_idx", "train_val_split", "write_idx",
    "normalize", "preprocess", "resize", "to_float",
    "random_offsets", "shift_images", "translate",
]
