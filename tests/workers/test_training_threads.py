"""An augment job trains with its own train.threads, else its pool process's share capped by the
work's size (workers.handlers._training_threads, models/threads.py)."""

from __future__ import annotations

import torch

from models.options import AugmentConfig
from workers.handlers import _training_threads


def test_a_jobs_training_threads_follow_the_process_share_and_the_work_size():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)  # the share lifecycle._child_init gave this pool process
        demo = AugmentConfig(preprocess={"spatial_dims": 3, "target_shape": [32, 32, 32]})
        assert _training_threads(demo) == 1  # 262k voxels per minibatch: small work
        big = AugmentConfig(preprocess={"spatial_dims": 3, "target_shape": [96, 112, 96]})
        assert _training_threads(big) == 4  # 8.3M voxels: the whole share
        torch.set_num_threads(2)
        assert _training_threads(big) == 2
        own = AugmentConfig(train={"batch_size": 8, "threads": 3})
        assert _training_threads(own) == 3
    finally:
        torch.set_num_threads(before)
