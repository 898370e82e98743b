"""Ignite handlers for MIDeepSeg training: learning curves as PNG, and atomic publishing of
the best checkpoint as a plain ``{"model": state_dict, "grid": [...]}`` file (the network
input grid it was trained on, which the infer task uses)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch
from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename over it: a killed run
    never leaves a half-written model where the infer task looks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def as_model_checkpoint(checkpoint, grid: Sequence[int] | None = None) -> dict:
    """Wrap a bare state dict (ignite saves a single object unwrapped) as ``{"model": ...}``,
    with the network's input ``grid`` when given."""
    if isinstance(checkpoint, dict) and "model" in checkpoint and isinstance(checkpoint["model"], dict):
        checkpoint = checkpoint["model"]
    return {"model": checkpoint} if grid is None else {"model": checkpoint, "grid": [int(n) for n in grid]}


class AtomicPublisher:
    """After each validation, publish the best checkpoint (``key_metric_path``, written by
    MONAI's ``CheckpointSaver``) to ``publish_path`` when it has changed, with the network's
    input ``grid``."""

    def __init__(self, key_metric_path: str, publish_path: str, grid: Sequence[int] | None = None) -> None:
        self.key_metric_path = key_metric_path
        self.publish_path = publish_path
        self.grid = grid
        self._published_mtime: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not os.path.exists(self.key_metric_path):
            return
        mtime = os.path.getmtime(self.key_metric_path)
        if mtime == self._published_mtime:
            return
        checkpoint = torch.load(self.key_metric_path, map_location="cpu", weights_only=True)
        save_atomic(as_model_checkpoint(checkpoint, self.grid), self.publish_path)
        self._published_mtime = mtime
        logger.info("published %s -> %s", self.key_metric_path, self.publish_path)


class LearningCurves:
    """Record the mean training loss and validation Dice per epoch; write them to
    ``<output_dir>/curves.json`` and plot them to ``<output_dir>/curves.png``."""

    def __init__(self, output_dir: str, metric_name: str) -> None:
        self.output_dir = Path(output_dir)
        self.metric_name = metric_name
        self.history: dict[str, list] = {"epoch": [], "loss": [], "val_epoch": [], "val_dice": []}
        self._losses: list[float] = []

    def attach(self, trainer: Engine, evaluator: Engine | None) -> None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch)
        if evaluator is not None:
            evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._on_validation, trainer)

    def _on_iteration(self, engine: Engine) -> None:
        out = engine.state.output
        item = out[0] if isinstance(out, list) else out
        if isinstance(item, dict) and "loss" in item:
            self._losses.append(float(item["loss"]))

    def _on_epoch(self, engine: Engine) -> None:
        if self._losses:
            self.history["epoch"].append(engine.state.epoch)
            self.history["loss"].append(sum(self._losses) / len(self._losses))
            logger.info("epoch %d: mean train loss %.4f", engine.state.epoch, self.history["loss"][-1])
        self._losses = []
        self._write()

    def _on_validation(self, evaluator: Engine, trainer: Engine) -> None:
        value = evaluator.state.metrics.get(self.metric_name)
        if value is not None:
            self.history["val_epoch"].append(trainer.state.epoch)
            self.history["val_dice"].append(float(value))
            logger.info("epoch %d: validation Dice %.4f", trainer.state.epoch, float(value))

    def _write(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "curves.json").write_text(json.dumps(self.history))
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.history["epoch"], self.history["loss"], label="train Dice loss")
        if self.history["val_dice"]:
            ax.plot(self.history["val_epoch"], self.history["val_dice"], label="validation Dice (crop grid)")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.output_dir / "curves.png", dpi=100)
        plt.close(fig)
