"""The bundled Fashion-MNIST ViT (trained by experiments/train_default.py)."""

from __future__ import annotations

import json
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
BUNDLED_CHECKPOINT = ASSETS_DIR / "fmnist_vit.npz"
BUNDLED_CARD = ASSETS_DIR / "fmnist_vit.json"


def bundled_card() -> dict:
    """The model card (config, training command, accuracy) of the bundled model."""
    if not BUNDLED_CARD.exists():
        raise FileNotFoundError(
            f"bundled model card {BUNDLED_CARD} is missing; run experiments/train_default.py"
        )
    return json.loads(BUNDLED_CARD.read_text())
