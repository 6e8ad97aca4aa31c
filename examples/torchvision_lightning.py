"""A Lightning project as its authors would write it: a stock torchvision detector (FCOS or
RetinaNet on a ResNet-18 FPN, or SSDlite320 on MobileNetV3-Large; no pretrained weights) trained on
a COCO-format folder and evaluated with torchmetrics. Quantizing it to W4A4, detection head
included, takes the lines marked ``# lightning_ptq``: one callback in the Trainer that tests it.

    python examples/torchvision_lightning.py --data ~/.cache/lightning_ptq/data/shapes
    python examples/torchvision_lightning.py --data ~/.cache/lightning_ptq/data/shapes --arch retinanet

(``--data``: a folder with ``images/<split>/`` and ``annotations/instances_<split>.json`` for the
splits train, calib, val and test, such as the default data ``python -m lightning_ptq`` generates.)
It trains the float model (or reuses ``<out>/fp.ckpt``), tests it, then tests two quantized
copies: W4A4 with ranges only, and W4A4 with the regression-aware method (log-affine head
quantizer, filtered global loss); prints the three mAPs and writes them to ``<out>/results.json``.
"""
from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchmetrics.detection import MeanAveragePrecision
from torchvision.datasets import CocoDetection
from torchvision.models import resnet18
from torchvision.models.detection import FCOS, RetinaNet, ssdlite320_mobilenet_v3_large
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.transforms.functional import pil_to_tensor

from lightning_ptq.callbacks import QuantizationCallback, RegPTQCallback  # lightning_ptq


class CocoFolder(CocoDetection):
    """(image [3, H, W] in [0, 1], {"boxes": [N, 4] xyxy, "labels": [N] category ids})."""

    def __getitem__(self, index):
        image, annotations = super().__getitem__(index)
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64)
        return pil_to_tensor(image.convert("RGB")).float() / 255, {"boxes": boxes, "labels": labels}


def collate(batch):
    return tuple(zip(*batch))  # (images, targets), as torchvision's detection models take them


def loader(root: str, split: str, batch_size: int, shuffle: bool = False, limit: int | None = None) -> DataLoader:
    dataset = CocoFolder(f"{root}/images", f"{root}/annotations/instances_{split}.json")
    if limit:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    return DataLoader(dataset, batch_size, shuffle=shuffle, collate_fn=collate)


def build(arch: str, num_classes: int, image_size: int):
    """torchvision's detector ``arch``; class 0 is unused (COCO ids start at 1; SSD's background)."""
    if arch == "ssdlite":  # torchvision resizes every image to 320 x 320
        return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes,
                                             score_thresh=0.05)
    width = 64  # channels of the FPN levels and of the head on them
    backbone = BackboneWithFPN(resnet18(weights=None), {"layer2": "0", "layer3": "1", "layer4": "2"},
                               [128, 256, 512], width, extra_blocks=LastLevelP6P7(width, width))
    if arch == "retinanet":  # GroupNorm in the head, as torchvision's retinanet_resnet50_fpn_v2: from random
        # weights the head without it stops learning (every image gets the same scores). 9 anchors per
        # location: RetinaNet's default anchor generator, 3 sizes x 3 aspect ratios.
        head = RetinaNetHead(width, 9, num_classes, norm_layer=partial(nn.GroupNorm, 32))
        return RetinaNet(backbone, num_classes, min_size=image_size, max_size=image_size, score_thresh=0.05,
                         head=head)
    return FCOS(backbone, num_classes, min_size=image_size, max_size=image_size, score_thresh=0.05)


class Detector(L.LightningModule):
    def __init__(self, num_classes: int, arch: str = "fcos", image_size: int = 128, lr: float = 2e-3):
        super().__init__()
        self.save_hyperparameters()
        self.model = build(arch, num_classes, image_size)
        self.map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")

    def training_step(self, batch, batch_idx):
        images, targets = batch
        losses = self.model(list(images), list(targets))
        loss = sum(losses.values())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def _update(self, batch):
        images, targets = batch
        self.map.update(self.model(list(images)), list(targets))

    def validation_step(self, batch, batch_idx):
        self._update(batch)

    def on_validation_epoch_end(self):
        self.log("val/map", self.map.compute()["map"])
        self.map.reset()

    def test_step(self, batch, batch_idx):
        self._update(batch)

    def on_test_epoch_end(self):
        self.log("test/map", self.map.compute()["map"])
        self.map.reset()

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, self.hparams.lr,
                                                       total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def trained(args) -> Path:
    """The float model's checkpoint: ``<out>/fp.ckpt``, trained here the first time."""
    path = Path(args.out) / "fp.ckpt"
    if path.exists():
        return path
    categories = json.loads(Path(args.data, "annotations", "instances_train.json").read_text())["categories"]
    torch.manual_seed(0)
    model = Detector(num_classes=max(c["id"] for c in categories) + 1, arch=args.arch, image_size=args.image_size)
    trainer = L.Trainer(max_epochs=args.epochs, default_root_dir=args.out, logger=False, enable_checkpointing=False)
    trainer.fit(model, loader(args.data, "train", 16, shuffle=True, limit=args.train_images))
    trainer.save_checkpoint(path)
    return path


def test_map(checkpoint: Path, args, callbacks=()) -> float:
    model = Detector.load_from_checkpoint(checkpoint)
    trainer = L.Trainer(callbacks=list(callbacks), default_root_dir=args.out, logger=False)
    return trainer.test(model, loader(args.data, "test", 16, limit=args.test_images))[0]["test/map"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="COCO-format folder (images/<split>, annotations/instances_<split>.json)")
    parser.add_argument("--arch", default="fcos", choices=["fcos", "retinanet", "ssdlite"])
    parser.add_argument("--out", default=None, help="default: runs/torchvision_<arch>")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--train-images", type=int, default=None, help="use only this many training images")
    parser.add_argument("--test-images", type=int, default=None, help="test on only this many images")
    parser.add_argument("--steps", type=int, default=200, help="calibration steps")
    args = parser.parse_args(argv)
    args.out = args.out or f"runs/torchvision_{args.arch}"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    checkpoint = trained(args)
    calib_images = loader(args.data, "calib", 16)  # lightning_ptq: the images to calibrate on
    results = {
        "fp32": test_map(checkpoint, args),
        # lightning_ptq: W4A4, every conv (head included), ranges only
        "w4a4_ranges": test_map(checkpoint, args, [QuantizationCallback(
            {"w_bits": 4, "a_bits": 4}, {"steps": 0}, calib_dataloader=calib_images, submodule="model")]),
        # lightning_ptq: W4A4 with the regression-aware method (torchvision heads: no weight tuning)
        "w4a4_reg_ptq": test_map(checkpoint, args, [RegPTQCallback(
            {"w_bits": 4, "a_bits": 4}, {"steps": args.steps, "weight_lr": 0.0}, calib_dataloader=calib_images,
            submodule="model")]),
    }
    results["retention_reg_ptq"] = results["w4a4_reg_ptq"] / results["fp32"] if results["fp32"] > 0 else 0.0
    Path(args.out, "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
