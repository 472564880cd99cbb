"""The training loop: the network on its ImageNet backbone, the crops, the focal and size losses,
and the run folder it writes (thresholds and size calibration from evaluate.py)."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from core.detect.learned import (
    DETECTOR_STATE,
    KINDS,
    CellDetector,
    DetectorCard,
    to_input,
)
from core.detect.network import CentreNet
from core.modelcard import sha256_file
from training.detect.config import POINT_CELL_UM, DetectorConfig
from training.detect.data import Sample, load_samples
from training.detect.evaluate import choose_thresholds, figures_by_source, size_calibration
from training.detect.transforms import augment, targets
from training.errors import ConfigError, DataError


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    kind_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, over the objects' count; `mask` (N, K, 1, 1)
    leaves out unlabelled kinds, `kind_weights` (1, K, 1, 1) weighs the kinds' terms."""
    prob = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    pos = -torch.log(prob) * (1 - prob) ** 2 * positive
    neg = -torch.log(1 - prob) * prob**2 * (1 - target) ** 4 * (1 - positive)
    n = (positive * mask).sum().clamp(min=1.0)
    weight = mask if kind_weights is None else mask * kind_weights
    return ((pos + neg) * weight).sum() / n


BODY_PREFIXES = ("stem.", "blocks.")


def build_network(cfg: DetectorConfig) -> CentreNet:
    """The network with the backbone's ImageNet weights ("imagenet", or a file of the full
    ImageNet state dict, or of the body alone in CentreNet's names: `stem.*`, `blocks.*`, the
    small file that travels to a lent GPU), or "random"."""
    network = CentreNet(cfg.backbone, cfg.width)
    if cfg.weights not in ("random", "imagenet") and Path(cfg.weights).is_file():
        state = torch.load(cfg.weights, map_location="cpu", weights_only=True)
        if state and all(k.startswith(BODY_PREFIXES) for k in state):
            missing = [
                k for k in network.state_dict() if k.startswith(BODY_PREFIXES) and k not in state
            ]
            if missing:
                raise ConfigError(
                    f"{cfg.weights} lacks {len(missing)} body weights, e.g. {missing[0]}"
                )
            network.load_state_dict(state, strict=False)
            return network
    if cfg.weights != "random":
        from training.archs import _lite_net

        pretrained: Any = _lite_net(cfg.backbone, cfg.weights)
        network.stem.load_state_dict(
            torch.nn.Sequential(
                pretrained._conv_stem, pretrained._bn0, pretrained._swish
            ).state_dict()
        )
        network.blocks.load_state_dict(pretrained._blocks.state_dict())
    return network


class FieldCrops(torch.utils.data.Dataset[tuple[torch.Tensor, ...]]):
    """Augmented training crops and their targets; each DataLoader worker draws its own random
    numbers (seeded from the run's seed, the epoch and the worker)."""

    def __init__(self, samples: list[Sample], cfg: DetectorConfig) -> None:
        self.samples = samples
        self.cfg = cfg
        self.point_side = POINT_CELL_UM / cfg.microns_per_pixel
        self.rng = np.random.default_rng(cfg.seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        sample = self.samples[index]
        crop, objects = augment(sample, self.cfg, self.rng)
        heat, size, mask = targets(objects, self.cfg.crop, self.point_side)
        x, _ = to_input(crop)
        return (
            torch.from_numpy(x[0]),
            torch.from_numpy(heat),
            torch.from_numpy(size),
            torch.from_numpy(mask),
            torch.tensor(sample.supervised, dtype=torch.float32)[:, None, None],
        )


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    assert info is not None
    dataset = info.dataset
    assert isinstance(dataset, FieldCrops)
    dataset.rng = np.random.default_rng([dataset.cfg.seed, int(torch.initial_seed()) % 2**31])


def train_detector(cfg: DetectorConfig, progress: bool = True) -> Path:
    """Train, choose thresholds on validation, write the run folder; returns it."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out_dir) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    train, valid, test, scales = load_samples(cfg, progress)
    print(f"fields: train {len(train)}, valid {len(valid)}, test {len(test)}", flush=True)
    device = torch.device(cfg.device)
    network = build_network(cfg).to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * (len(train) // cfg.batch_size)
    if steps < 1:
        raise DataError(f"{len(train)} training fields: fewer than one batch of {cfg.batch_size}")
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=cfg.lr, total_steps=steps, pct_start=0.2
    )
    loader = torch.utils.data.DataLoader(
        FieldCrops(train, cfg),
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=cfg.workers,
        worker_init_fn=_seed_worker if cfg.workers else None,
        generator=torch.Generator().manual_seed(cfg.seed),
        persistent_workers=cfg.workers > 0,
    )
    kind_weights = torch.tensor(cfg.kind_weights, device=device).view(1, -1, 1, 1)
    history = []
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        network.train()
        losses = []
        for images, heat, size, mask, weight in loader:
            logits, sizes = network(images.to(device))
            heat_loss = focal_loss(logits, heat.to(device), weight.to(device), kind_weights)
            m = mask.to(device)
            size_loss = (F.l1_loss(sizes, size.to(device), reduction="none") * m).sum() / (
                2 * m.sum().clamp(min=1.0)
            )
            loss = heat_loss + cfg.size_weight * size_loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        row = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        if progress:
            print(
                f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}, {row['seconds']:.0f} s",
                flush=True,
            )
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(asdict(cfg)))
    model_dir = run_dir / "detector"
    model_dir.mkdir(exist_ok=True)
    torch.save(network.cpu().state_dict(), model_dir / DETECTOR_STATE)
    finish_detector(run_dir, cfg, (train, valid, test, scales))
    return run_dir


def finish_detector(
    run_dir: Path,
    cfg: DetectorConfig,
    data: tuple[list[Sample], list[Sample], list[Sample], dict[str, float]] | None = None,
) -> DetectorCard:
    """From a run's trained weights: choose the thresholds on validation, calibrate the box
    sizes, measure the test fields per source, write the card. `train-detector --finish RUN`
    runs it again on a finished run (after a change to how thresholds are chosen, say)."""
    train, valid, test, scales = data or load_samples(cfg, progress=False)
    model_dir = run_dir / "detector"
    state_path = model_dir / DETECTOR_STATE
    network = CentreNet(cfg.backbone, cfg.width)
    network.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    card = DetectorCard(
        name=cfg.name,
        backbone=cfg.backbone,
        width=cfg.width,
        microns_per_pixel=cfg.microns_per_pixel,
        thresholds=dict.fromkeys(KINDS, 0.3),
    )
    detector = CellDetector(network, card)
    thresholds = card.thresholds
    valid_figures: dict[str, Any] = {}
    if valid:
        thresholds, valid_figures = choose_thresholds(detector, valid, scales)
        card.size_calibration = size_calibration(detector, valid)
    test_figures = figures_by_source(detector, test, scales)
    card.thresholds = thresholds
    card.state_sha256 = sha256_file(state_path)
    card.metrics = {"valid": valid_figures, "test_with_scale": test_figures}
    card.dataset = {
        "sources": sorted({s.source for s in train}),
        "left_out": cfg.leave_out,
        "train_fields": len(train),
        "valid_fields": len(valid),
        "test_fields": len(test),
        "source_microns_per_pixel": scales,
        "scale_note": "txl-pbc scales derived from each source's median red-cell box side "
        "(7.5 um); Chula's 0.19 from its scale bar",
    }
    card.training_config = asdict(cfg)
    card.library_versions = {"torch": torch.__version__}
    card.created = time.strftime("%Y-%m-%d %H:%M:%S")
    card.save(model_dir)
    print(f"thresholds {thresholds}; size calibration {card.size_calibration:.3f}")
    print(f"valid {json.dumps(valid_figures)}", flush=True)
    for source, figures in test_figures.items():
        print(f"test {source}: {json.dumps(figures)}", flush=True)
    return card
