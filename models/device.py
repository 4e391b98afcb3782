"""Device and precision choice in one place, so every scorer behaves the same on CPU and CUDA."""

from __future__ import annotations

import contextlib

import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, else CUDA when present, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (fp16 where bf16 is unsupported); a no-op on CPU."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def batches(n: int, batch_size: int):
    """Slices covering range(n) in chunks of batch_size."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
