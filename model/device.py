"""Pick the torch device from the `device` setting (auto|cpu|cuda) with a CPU fallback."""

from __future__ import annotations

from typing import Literal

import torch

from model.errors import ConfigError

__all__ = ["DeviceName", "autocast_dtype", "resolve_device"]

DeviceName = Literal["auto", "cpu", "cuda"]


def resolve_device(device: str = "auto") -> torch.device:
    """auto: CUDA when available, else CPU. cuda without a GPU falls back to CPU."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, not {device!r}")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Reduced precision for inference on CUDA (bf16 where supported), none on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
