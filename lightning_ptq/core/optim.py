"""The optimiser the default models (detectors, keypoint model, classifier) are pretrained with."""
from __future__ import annotations

import torch
from torch import nn


def adamw_warmup_cosine(model: nn.Module, total_steps: int, lr: float, weight_decay: float,
                        warmup_fraction: float = 0.05) -> dict:
    """AdamW (no weight decay on norm layers, biases and scalars), linear warm-up over
    ``warmup_fraction`` of ``total_steps``, then cosine decay to 2% of ``lr``; in the form
    Lightning's ``configure_optimizers`` returns (the schedule steps per batch)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    warmup = max(1, int(warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, 1.0, warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, total_steps - warmup), eta_min=lr * 0.02),
    ], milestones=[warmup])
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
