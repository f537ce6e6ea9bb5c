"""scikit-learn's bundled 8x8 digits: a real image dataset that works offline and trains in seconds."""

from __future__ import annotations

import numpy as np
import torch

from prunelab.data.base import DatasetInfo, RawData, register_loader
from prunelab.data.builtin import BuiltinLoader

TEST_SIZE = 360
#: Mean and std of the 1437 training images (scaled to [0, 1]) of the fixed split below.
MEAN, STD = 0.3054, 0.3761


@register_loader
class Digits(BuiltinLoader):
    info = DatasetInfo(
        name="digits",
        input_shape=(1, 8, 8),
        num_classes=10,
        mean=(MEAN,),
        std=(STD,),
        augment=False,
        default_val_size=144,
        description="scikit-learn's 8x8 handwritten digits: 1437 training and 360 test images (1797 in all)",
        how_to_get="bundled with scikit-learn; nothing to download",
    )
    origin = "bundled with scikit-learn (offline)"

    def generate(self) -> RawData:
        """Stratified 1437/360 train/test split fixed by ``random_state=0``; pixels 0..16 scaled to [0, 1]."""
        from sklearn.datasets import load_digits  # slow import: only when this dataset is used
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        x = (bunch.images.astype(np.float32) / 16.0)[:, None]
        x_train, x_test, y_train, y_test = train_test_split(
            x, bunch.target, test_size=TEST_SIZE, stratify=bunch.target, random_state=0
        )
        return RawData(
            torch.from_numpy(np.ascontiguousarray(x_train)),
            torch.from_numpy(y_train.astype(np.int64)),
            torch.from_numpy(np.ascontiguousarray(x_test)),
            torch.from_numpy(y_test.astype(np.int64)),
            self.origin,
        )
