"""Train the FP models of the default recipes and put them in ``lightning_ptq/pretrained/``, where a
first run finds them instead of pretraining (see ``lightning_ptq/core/cached_training.py``).

    python scripts/ship_pretrained.py          # about 13 minutes on 2 CPU cores

Each model comes from the jobs' own loading code, in a fresh cache and with
``LIGHTNING_PTQ_TRAIN_DEFAULTS=1``, so it is exactly the training a first run would do; the
cached files (named by the key of their settings and data) are then copied over. Rerun it after
changing a default model, its training or the default data: their key changes, and a first run
would pretrain again (``tests/detection/test_shipped_pretrained.py`` says so).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from lightning_ptq.detection import load_data_and_model
from lightning_ptq.classify.task import load_classification_data_and_model
from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.keypoints.task import keypoint_model_kwargs, load_keypoint_data_and_model
from lightning_ptq.core.cached_training import SHIPPED_ENV, shipped_dir

LOADERS = {
    "yolo_w4a4": load_data_and_model,
    "keypoint_w4a4": lambda cfg: load_keypoint_data_and_model(cfg, keypoint_model_kwargs(cfg)),
    "classifier_w4a4_search": load_classification_data_and_model,
}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # the progress lines
    os.environ[SHIPPED_ENV] = "1"
    out = shipped_dir()
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as cache:
        for recipe, load in LOADERS.items():
            print(f"training the FP model of {recipe}", flush=True)
            load(compose_config([f"+recipe={recipe}", "logger=none", f"cache_dir={cache}"]))
        for old in out.glob("*.pt"):
            old.unlink()
        for model in sorted(Path(cache, "models").glob("*.pt")):
            shutil.copyfile(model, out / model.name)
            print(f"shipped {out / model.name} ({model.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
