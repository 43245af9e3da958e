"""Per-sample seeds, derived from (job seed, epoch, sample key): a sample's crop and flips, and every random choice of
its degradations with `otf_draws: per_sample` (per-batch draws seed the batch's choices from its samples' seeds).

The seed depends on nothing else (not the rank, the DataLoader worker, the batch or its size), so with per-sample draws
a job makes the same LR for a sample however many workers it runs on and however its batches are cut. Python's hash()
is salted per process, so the digest is blake2b, which every process and machine computes alike.
"""

from __future__ import annotations

import hashlib

import numpy as np

SEED_BITS = 63  # fits torch.Generator.manual_seed, numpy's SeedSequence and a signed int64 array


def sample_seed(job_seed: int, epoch: int, key: str) -> int:
    """A 63-bit seed for one sample. If a key can occur twice in an epoch (resampled data), put the occurrence in it."""
    message = f"{int(job_seed)}\x1f{int(epoch)}\x1f{key}".encode()
    digest = hashlib.blake2b(message, digest_size=8, person=b"srcluster-lr").digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)


def sample_rng(seed: int) -> np.random.Generator:
    """The numpy generator that draws one sample's degradation parameters."""
    return np.random.default_rng(int(seed))


def child_seed(rng: np.random.Generator) -> int:
    """A seed for a stream of pixel noise, drawn from the sample's generator (so it is as reproducible as it)."""
    return int(rng.integers(0, 1 << SEED_BITS))
