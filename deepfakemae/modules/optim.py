"""Optimiser helpers shared by the LightningModules."""

from __future__ import annotations

import math

import torch
from torch import nn


def decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on weight matrices, none on norms, biases and tokens."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or "token" in name or "pos_embed" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the base lr, then cosine decay to ``min_ratio`` × base lr, per step."""
    total_steps = max(total_steps, 1)
    warmup_steps = min(max(warmup_steps, 0), total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def scheduled(module, optimizer: torch.optim.Optimizer, warmup_fraction: float = 0.0,
              min_ratio: float = 0.0) -> dict:
    """What ``module.configure_optimizers`` returns: ``optimizer`` with :func:`warmup_cosine`
    over the run's estimated optimiser steps (``warmup_fraction`` of them warming up), stepped
    every step."""
    total = int(module.trainer.estimated_stepping_batches)
    scheduler = warmup_cosine(optimizer, int(warmup_fraction * total), total, min_ratio)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
