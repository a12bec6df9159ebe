"""Offline datasets shared by the benchmarks."""

from __future__ import annotations

import torch


def mnist1d(seed: int | None = None, num_samples: int | None = None) -> dict[str, torch.Tensor]:
    """MNIST-1D generated locally (by default 4000 training / 1000 test sequences of length 40, 10 classes; 80/20 of
    `num_samples` when given) as (N, 1, 40) float32 tensors standardised with the training set's mean and std; `seed`
    overrides mnist1d's default."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    if seed is not None:
        args.seed = seed
    if num_samples is not None:
        args.num_samples = num_samples
    d = make_dataset(args)
    x, xt = (torch.as_tensor(d[k], dtype=torch.float32) for k in ("x", "x_test"))
    mean, std = x.mean(), x.std()
    return {"x": ((x - mean) / std).unsqueeze(1), "y": torch.as_tensor(d["y"]).long(),
            "x_test": ((xt - mean) / std).unsqueeze(1), "y_test": torch.as_tensor(d["y_test"]).long()}
