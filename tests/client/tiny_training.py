"""A tiny Lightning fit that saves a checkpoint every two of its six steps."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest


def fit_tiny_model(
    tmp_path: Path,
    callback: Any,
    *,
    logger: Any = False,
    step_seconds: float = 0.0,
    crash_at_step: int | None = None,
    **checkpoint_options: Any,
):
    """Six steps, a checkpoint every two; ``step_seconds`` makes each step last at least that long,
    and the training step raises ``RuntimeError("training crashed")`` at ``crash_at_step``."""
    # Imported here, not at the top: the client tests that need no Lightning run without it.
    import torch
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            time.sleep(step_seconds)
            if self.global_step == crash_at_step:
                raise RuntimeError("training crashed")
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(16, 4), torch.randn(16, 1)), batch_size=4)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, **checkpoint_options
    )
    trainer = Trainer(
        max_steps=6,
        accelerator="cpu",
        devices=1,
        callbacks=[checkpoint, callback],
        logger=logger,
        enable_progress_bar=False,
        log_every_n_steps=1,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(), loader)
    return trainer


lightning_warnings = pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\):FutureWarning")
