"""Shared fixtures: the development data folder and small synthetic images.

Synthetic images are a bright disk (2D) or ball (3D) on a darker, mildly noisy
background, channel-first ``(1, *spatial)`` float32, together with the object's mask.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT / ".." / "shared" / "data"
APP_MODELS = REPO_ROOT / "apps" / "midepseg" / "model"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stage1_mask(task, image: str | Path, points: np.ndarray, **request) -> np.ndarray:
    """The infer task's boolean answer to the margin points alone (``request``: extra keys,
    e.g. ``slice_axis``); the shape of the image's spatial axes
    (``scripts/evaluate_generalisation.py: stage1``)."""
    from scripts.evaluate_generalisation import stage1

    return stage1(task, str(image), np.asarray(points), **request)


def ellipsoid_mask(shape, centre, radius, spacing=None) -> np.ndarray:
    """Boolean disk/ball (``radius`` in physical units) of ``shape`` around ``centre`` (voxels)."""
    sp = np.ones(len(shape)) if spacing is None else np.asarray(spacing, dtype=np.float64)
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    r2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, sp))
    return r2 <= radius**2


def noisy_image(mask: np.ndarray, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """``(1, *spatial)`` float32: 0.8 inside ``mask``, 0.2 outside, plus gaussian noise."""
    rng = np.random.RandomState(seed)
    img = np.where(mask, 0.8, 0.2) + noise * rng.randn(*mask.shape)
    return img[None].astype(np.float32)


def dice_np(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repository; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"development data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def disk_2d():
    """``(image (1,64,64), mask (64,64) bool)``: disk of radius 15 at (30, 34)."""
    mask = ellipsoid_mask((64, 64), (30, 34), 15)
    return noisy_image(mask, seed=1), mask


@pytest.fixture
def ball_3d():
    """``(image (1,40,40,32), mask (40,40,32) bool)``: ball of radius 10 at (20, 18, 15)."""
    mask = ellipsoid_mask((40, 40, 32), (20, 18, 15), 10)
    return noisy_image(mask, seed=2), mask


@pytest.fixture
def aniso_ball_3d():
    """``(image (1,40,40,16), mask, spacing (1,1,3))``: ball of physical radius 10 mm in a
    volume with 3 mm slices."""
    spacing = (1.0, 1.0, 3.0)
    mask = ellipsoid_mask((40, 40, 16), (20, 18, 8), 10, spacing)
    return noisy_image(mask, seed=3), mask, spacing


@pytest.fixture
def border_disk_2d():
    """``(image, mask)``: disk of radius 15 whose centre is on the top image border."""
    mask = ellipsoid_mask((64, 64), (0, 30), 15)
    return noisy_image(mask, seed=4), mask


@pytest.fixture
def thin_bar_2d():
    """``(image, mask)``: a 3-pixel-thick, 55-pixel-long horizontal bar."""
    mask = np.zeros((64, 64), dtype=bool)
    mask[20:23, 5:60] = True
    return noisy_image(mask, seed=5), mask
