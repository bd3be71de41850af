"""DANN's target batches: the unlabeled target set cycled as often as the source needs, shuffled by the generator
the source loader shares, and put back mid-pass when a checkpointed run resumes.

A pass over the target set rarely ends with an epoch, so an epoch's target batches depend on the pass it starts
in: its order, and how many of its batches were taken. Both are buffers of `TargetCycle` (the generator's state
as the pass drew its order, and a count), saved with the objective's weights. A resumed run draws that order again
from that state and skips the batches taken, by their indices only (no input is read), and the generator goes
on from the state the checkpoint restored: every draw is the one an uninterrupted run makes (the sampler's own
draw at the end of each pass included), so the batches are too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from ..modalities import modality_of


class NotedOrder(RandomSampler):
    """A RandomSampler (the same draws) that notes its generator's state as each pass draws its order."""

    start: torch.Tensor | None = None

    def __iter__(self) -> Iterator[int]:
        self.start = self.generator.get_state()  # runs at the pass's first index, just before its draw
        yield from super().__iter__()


def target_loader(backbone, items: Sequence, batch_size: int, generator: torch.Generator) -> DataLoader:
    """The target inputs in shuffled batches, as adapt._loader builds them (train-time transforms, no targets)."""
    modality = modality_of(backbone)
    data = modality.dataset(items, None, backbone, True)
    return DataLoader(data, batch_size=batch_size, sampler=NotedOrder(data, generator=generator),
                      collate_fn=modality.collate(backbone), generator=generator, drop_last=False)


class TargetCycle(nn.Module):
    """Batches of `loader`, cycled: `next()` starts a new pass when one ends. Its position is in its buffers."""

    def __init__(self, loader: DataLoader) -> None:
        super().__init__()
        self.loader = loader
        self.register_buffer("start", torch.zeros_like(loader.generator.get_state()))
        self.register_buffer("taken", torch.zeros((), dtype=torch.long))
        self._batches: Iterator | None = None
        self._fresh = False  # the current pass has given no batch yet

    def begin(self) -> None:
        """The first pass's iterator, made where an uninterrupted run makes it (its creation draws a seed)."""
        self._batches, self._fresh = iter(self.loader), True

    def next(self):
        if self._batches is None:  # resumed: the buffers now hold the checkpoint's position
            self._batches, self._fresh = self._resumed(), False
        try:
            batch = next(self._batches)
        except StopIteration:
            self.begin()
            batch = next(self._batches)
        if self._fresh:
            self.start.copy_(self.loader.sampler.start)
            self.taken.zero_()
            self._fresh = False
        self.taken += 1
        return batch

    def _resumed(self) -> Iterator:
        generator, loader = self.loader.generator, self.loader
        now = generator.get_state()
        generator.set_state(self.start.cpu())
        indices = iter(loader.batch_sampler)
        for _ in range(int(self.taken)):
            next(indices)
        generator.set_state(now)
        for idx in indices:  # as a DataLoader without workers fetches a batch
            yield loader.collate_fn([loader.dataset[i] for i in idx])
