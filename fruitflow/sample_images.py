"""Fruit-like images for running without the Fruits-360 samples: per class a body colour, a shape and
a stalk, drawn on a white background like Fruits-360, with per-image pose, size and noise."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CLASSES = {  # name: (BGR colour, axes ratio, has stalk)
    "Generated_Cherry": ((40, 20, 200), 1.0, True),
    "Generated_Banana": ((40, 220, 240), 0.35, False),
    "Generated_Lime": ((40, 200, 90), 0.9, False),
    "Generated_Orange": ((20, 140, 250), 1.0, False),
    "Generated_Plum": ((110, 30, 90), 0.85, True),
    "Generated_Pear": ((60, 210, 180), 0.7, True),
}


def fruit_image(colour, ratio: float, stalk: bool, rng: np.random.Generator, size: int = 100) -> np.ndarray:
    img = np.full((size, size, 3), 255, np.uint8)
    centre = (int(size / 2 + rng.integers(-6, 7)), int(size / 2 + rng.integers(-6, 7)))
    major = int(rng.integers(30, 42))
    axes = (major, max(6, int(major * ratio * rng.uniform(0.9, 1.1))))
    angle = float(rng.uniform(0, 180))
    shade = np.clip(np.array(colour) + rng.integers(-25, 26, 3), 0, 255).tolist()
    cv2.ellipse(img, centre, axes, angle, 0, 360, shade, -1, cv2.LINE_AA)
    highlight = np.clip(np.array(shade) + 60, 0, 255).tolist()
    cv2.ellipse(img, (centre[0] - axes[0] // 3, centre[1] - axes[1] // 3), (axes[0] // 5, max(2, axes[1] // 6)),
                angle, 0, 360, highlight, -1, cv2.LINE_AA)
    if stalk:
        top = (centre[0], centre[1] - axes[1])
        cv2.line(img, top, (top[0] + int(rng.integers(-6, 7)), top[1] - 12), (30, 70, 90), 2, cv2.LINE_AA)
    noise = rng.normal(0, 4, img.shape)
    return np.clip(img.astype(np.float64) + noise, 0, 255).astype(np.uint8)


def generate(folder: Path, per_class: int = 20, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    n = 0
    for name, (colour, ratio, stalk) in CLASSES.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cv2.imwrite(str(folder / name / f"{i:03d}_100.jpg"), fruit_image(colour, ratio, stalk, rng))
            n += 1
    return n
