"""Early stopping on a validation loss, shared by the scorers' training loops."""

from __future__ import annotations

import copy
import math

import torch


class EarlyStopping:
    """Tracks a fit's best validation loss; with `patience` (epochs without a better one before stopping) it also
    keeps the best weights of `module`, which `restore` puts back (without, the last epoch's weights stay).

    >>> stop = EarlyStopping(torch.nn.Linear(1, 1), patience=2)
    >>> [stop.update(epoch, loss) for epoch, loss in enumerate([3.0, 2.0, 2.5, 2.4])], stop.best_epoch
    ([False, False, False, True], 1)
    """

    def __init__(self, module: torch.nn.Module, patience: int | None) -> None:
        self.module, self.patience = module, patience
        self.best, self.best_epoch, self.stale = math.inf, -1, 0
        self._best_state: dict | None = None

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record an epoch's validation loss; True when the fit should stop."""
        if val_loss < self.best:
            self.best, self.best_epoch, self.stale = val_loss, epoch, 0
            if self.patience is not None:  # only early stopping restores the best weights
                self._best_state = copy.deepcopy(self.module.state_dict())
        else:
            self.stale += 1
        return self.patience is not None and self.stale >= self.patience

    def restore(self) -> None:
        """Load the best weights back (early stopping only)."""
        if self._best_state is not None:
            self.module.load_state_dict(self._best_state)
