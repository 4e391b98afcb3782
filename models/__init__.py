"""Anomaly scorers for sensor vectors (RVAE) and camera frames (Transformaly).

Pure PyTorch/numpy: nothing here knows about Kafka or Redis.
"""

from models.factory import Scorer, load_scorer
from models.persistence import ModelIntegrityError


def __getattr__(name: str):
    # Lazy so `import models` stays cheap for tools that only need load_scorer.
    if name == "RVAEScorer":
        from models.rvae import RVAEScorer

        return RVAEScorer
    if name == "TransformalyScorer":
        from models.transformaly import TransformalyScorer

        return TransformalyScorer
    raise AttributeError(name)


__all__ = ["ModelIntegrityError", "RVAEScorer", "Scorer", "TransformalyScorer", "load_scorer"]
