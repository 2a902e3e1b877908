"""Small untrained models of the real families, exported by the trainer's own export code.

`make_tiny_serving_model` writes a served version (optionally with a screening network) whose
signatures, assets and model_info are those of a trained version; `tiny_scope_screen` is the
untrained screening network it can carry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.trainer.artifact.export import export_for_serving
from services.trainer.modeling.model import build_cnn
from services.trainer.scope.data import SCOPE_POOL
from services.trainer.scope.model import EMBEDDING, HEADS, ScopeScreen, build_scope_net
from shared.contract import MODEL_NAME


def tiny_scope_screen(seed: int = 0) -> ScopeScreen:
    """An untrained narrow screen with unit statistics and fixed thresholds."""
    net = build_scope_net(width=2, seed=seed)
    dim = int(net.output[EMBEDDING].shape[-1])
    thresholds = np.array([0.5] * len(HEADS) + [10.0], np.float32)
    return ScopeScreen(net, np.zeros(dim, np.float32), np.eye(dim, dtype=np.float32), thresholds,
                       {"input_pool": SCOPE_POOL, "width": 2, "tiny_untrained": True})


def make_tiny_serving_model(
    base_path: str | Path,
    version: int,
    *,
    seed: int = 0,
    threshold: float = 0.5,
    model_name: str = MODEL_NAME,
    image_size: int = 224,
    scope: bool = False,
) -> Path:
    """A small untrained model of the real family, exported for serving.

    `scope=True` adds an untrained screening network (`tiny_scope_screen`), so the version also
    answers SCOPE_SCORES and SCOPE_THRESHOLDS.
    """
    model = build_cnn(image_size=image_size, width=4, dropout=0.0, seed=seed)
    screen = None
    if scope:
        screen = tiny_scope_screen(seed=seed)
    return export_for_serving(
        model,
        base_path=base_path,
        version=version,
        threshold=threshold,
        model_name=model_name,
        extra_info={"tiny_untrained": True, "seed": seed},
        scope=screen,
    )
