"""The worker's heap and the cyclic garbage collector: served models are frozen out of its scans, and a model a
swap replaced is freed once no batch holds it any more."""

from __future__ import annotations

import gc
import logging
import weakref
from typing import Any

log = logging.getLogger(__name__)

YOUNG_COLLECTION = 50_000  # net new container objects between collections of the youngest generation


def freeze_heap(collect: bool = False) -> None:
    """Move every live object to the permanent generation: the ~500k objects of the imports and the served
    models live on, and full collections rescanning them mid-batch made the vector path slower (a ViT served
    beside the RVAE cost ~30% of its events/s until its objects were frozen too). Frozen objects are never
    collected, so `collect` first unfreezes and collects (~0.3 s) to free what is garbage by now.

    The youngest generation is collected after YOUNG_COLLECTION net new objects instead of 700: a batch keeps a
    few objects per event alive until it is published (records, events, verdicts), so at 700 the collector ran
    several times per batch, scanning objects that reference counting frees anyway (~7% of the vector path's
    time, measured with gc.callbacks in a worker). Cycles are still collected, a little later."""
    if collect:
        gc.unfreeze()
        gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION, *gc.get_threshold()[1:])


class ServedHeap:
    """`on_load` (the model manager's callback) freezes each version that starts serving. The version a swap
    replaces is still referenced then (by the swap itself, and by a batch scoring with it while the swap lands),
    so it is frozen too; `after_batch`, called when a batch is done, collects until it is gone: the next batch
    usually, tried after at most TRIES batches."""

    TRIES = 3

    def __init__(self) -> None:
        self._replaced: list[weakref.ref] = []  # the scorers of replaced versions, until they are freed
        self._tries = 0

    def on_load(self, loaded: Any, replaced: Any | None) -> None:
        freeze_heap()
        if replaced is not None:
            self._replaced.append(weakref.ref(replaced.scorer))
            self._tries = 0

    def after_batch(self) -> None:
        if not self._replaced:
            return
        freeze_heap(collect=True)
        self._tries += 1
        self._replaced = [ref for ref in self._replaced if ref() is not None]
        if self._replaced and self._tries >= self.TRIES:
            log.warning("%d replaced model(s) still referenced after %d batches; freed at the next swap",
                        len(self._replaced), self._tries)  # fmt: skip
            self._replaced = []
