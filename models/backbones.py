"""Where a camera model's pretrained backbone weights come from, and a clear refusal when they cannot be had.

A product default never falls back to random weights: `hub_weights_file` finds the architecture's
weights in the Hugging Face cache (or downloads them when the hub is reachable and HF_HUB_OFFLINE is
not set) and otherwise raises `BackboneUnavailable` with the ways to supply them.
"""

from __future__ import annotations

import os
from pathlib import Path

HOW_TO_SUPPLY = (
    "supply the weights one of three ways: (1) on a machine with internet, run "
    "`python -c \"import timm; timm.create_model('{arch}', pretrained=True)\"` to fill the Hugging Face cache "
    "(HF_HOME) and copy that cache here; (2) pass a safetensors file with `--weights FILE` (checked against "
    "the architecture); (3) import it once into the registry with `linewatch models backbone import FILE "
    "--arch {arch}`. Without any weights, `--kind patch-memory` fits the offline image scorer; for tests and demos "
    "only, `--random-backbone` fits Transformaly on an untrained backbone."
)


class BackboneUnavailable(RuntimeError):
    """No pretrained weights for the architecture here; the message says how to bring them."""


def hub_offline() -> bool:
    """The Hugging Face hub conventions for 'do not touch the network'."""
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_weights_file(arch: str) -> Path:
    """The local file of timm `arch`'s pretrained weights: from the HF cache, else downloaded if allowed."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise BackboneUnavailable(f"timm has no hub weights for {arch!r}; " + HOW_TO_SUPPLY.format(arch=arch))
    for filename in ("model.safetensors", "open_clip_model.safetensors"):
        cached = try_to_load_from_cache(repo_id=repo, filename=filename)
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
    if hub_offline():
        raise BackboneUnavailable(
            f"no pretrained weights for {arch} in the Hugging Face cache and HF_HUB_OFFLINE is set; "
            + HOW_TO_SUPPLY.format(arch=arch)
        )
    try:
        return Path(hf_hub_download(repo_id=repo, filename="model.safetensors", etag_timeout=10))
    except Exception as exc:  # no network, no such file, auth: all mean "not here"
        raise BackboneUnavailable(
            f"could not fetch pretrained weights for {arch} from the hub ({type(exc).__name__}: {exc}); "
            + HOW_TO_SUPPLY.format(arch=arch)
        ) from None
