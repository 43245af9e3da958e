"""traiNNer-redux's training-pair pool (Real-ESRGAN's `_dequeue_and_enqueue`, `queue_size`), for `otf_draws: per_batch`.

Drawing degradations once per batch makes every sample of a batch share its resize factor, noise kind and JPEG switch;
the pool mixes batches again. It holds `queue_size` degraded (HR, LR) pairs: until it is full each batch is stored and
trained on as it is; from then on the pool is shuffled, the batch trains on its first `batch` pairs and leaves its own
in their place. Per process and not checkpointed, as redux's (a resumed run fills it again).

Used where the per_batch LR is made: in the training step when degradations run on the device (`train/batch.py`), in
each DataLoader worker when they run there (`data/crops.py`). Pairs stay as they come (uint8 or float, on their device).
"""

from __future__ import annotations

import torch


class PairPool:
    def __init__(self, size: int, seed: int):
        self.size = size
        self.seed = seed
        self.hr: torch.Tensor | None = None
        self.lr: torch.Tensor | None = None
        self.filled = 0
        self.generator: torch.Generator | None = None

    def capacity(self, batch: int) -> int:
        """The pool's size for batches of `batch`: queue_size rounded down to a multiple of it (redux stops on one
        that does not divide), and at least one batch."""
        return max(batch, self.size // batch * batch)

    def swap(self, hr: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair to train on instead of (hr, lr): themselves while the pool fills, then `len(hr)` pooled pairs."""
        b = len(hr)
        if self.hr is None or self.lr is None:
            capacity = self.capacity(b)
            self.hr = hr.new_zeros((capacity, *hr.shape[1:]))
            self.lr = lr.new_zeros((capacity, *lr.shape[1:]))
            self.generator = torch.Generator().manual_seed(self.seed)  # on the CPU: the order is tiny, any device
        capacity = len(self.hr)
        if b > capacity or hr.shape[1:] != self.hr.shape[1:] or lr.shape[1:] != self.lr.shape[1:]:
            raise ValueError(
                f"a batch of {tuple(hr.shape)} / {tuple(lr.shape)} does not fit a training-pair pool of "
                f"{tuple(self.hr.shape)} / {tuple(self.lr.shape)}"
            )
        if self.filled + b <= capacity:  # filling: keep a copy, train on the batch as it is
            self.hr[self.filled : self.filled + b] = hr
            self.lr[self.filled : self.filled + b] = lr
            self.filled += b
            return hr, lr
        order = torch.randperm(capacity, generator=self.generator).to(self.hr.device)
        self.hr, self.lr = self.hr[order], self.lr[order]
        out = self.hr[:b].clone(), self.lr[:b].clone()
        self.hr[:b] = hr
        self.lr[:b] = lr
        return out
