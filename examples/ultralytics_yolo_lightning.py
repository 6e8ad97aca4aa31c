"""A Lightning project as an Ultralytics user would write it: an Ultralytics YOLOv8n
``DetectionModel`` built from Ultralytics' own ``yolov8n.yaml`` (no download), trained with its own
loss on a COCO-format folder in Ultralytics' batch format, evaluated with Ultralytics' NMS and
torchmetrics. Quantizing it to W4A4, detection head included, takes the lines marked
``# lightning_ptq``: one callback in the Trainer that tests it. (Needs the ``ultralytics`` extra;
Ultralytics is AGPL-3.0.)

    python examples/ultralytics_yolo_lightning.py --data ~/.cache/lightning_ptq/data/shapes

(``--data``: a folder with ``images/<split>/`` and ``annotations/instances_<split>.json`` for the
splits train, calib and test, such as the default data ``python -m lightning_ptq`` generates.)
It trains the float model (or reuses ``<out>/fp.ckpt``), tests it, then tests two quantized
copies: W4A4 with ranges only, and W4A4 with the regression-aware method (log-affine quantizer on
the head's convolutions, filtered global loss, weights tuned); prints the three mAPs and writes
them to ``<out>/results.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset
from torchmetrics.detection import MeanAveragePrecision
from torchvision.datasets import CocoDetection
from torchvision.transforms.functional import pil_to_tensor
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.nms import non_max_suppression

from lightning_ptq.callbacks import QuantizationCallback, RegPTQCallback  # lightning_ptq


class CocoFolder(CocoDetection):
    """(image [3, H, W] in [0, 1], boxes [N, 4] xyxy px, class indices [N])."""

    def __getitem__(self, index):
        image, annotations = super().__getitem__(index)
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64)
        return pil_to_tensor(image.convert("RGB")).float() / 255, boxes, labels


def collate(samples):
    """Ultralytics' batch: images, and every box with its image index, class and normalised xywh."""
    images = torch.stack([s[0] for s in samples])
    height, width = images.shape[-2:]
    boxes = torch.cat([s[1] for s in samples])
    xywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
    return {"img": images,
            "batch_idx": torch.cat([torch.full((len(s[1]),), i) for i, s in enumerate(samples)]).float(),
            "cls": torch.cat([s[2] for s in samples]).float().view(-1, 1),
            "bboxes": xywh / torch.tensor([width, height, width, height]),
            "targets": [{"boxes": s[1], "labels": s[2]} for s in samples]}  # for the metric


def loader(root: str, split: str, batch_size: int, shuffle: bool = False, limit: int | None = None) -> DataLoader:
    dataset = CocoFolder(f"{root}/images", f"{root}/annotations/instances_{split}.json")
    if limit:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    return DataLoader(dataset, batch_size, shuffle=shuffle, collate_fn=collate)


class Detector(L.LightningModule):
    def __init__(self, num_classes: int, lr: float = 2e-3):
        super().__init__()
        self.save_hyperparameters()
        self.model = DetectionModel("yolov8n.yaml", nc=num_classes, verbose=False)
        self.model.args = get_cfg()  # Ultralytics' default loss gains
        self.map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")

    def training_step(self, batch, batch_idx):
        loss, _ = self.model.loss(batch)  # Ultralytics' v8 detection loss, summed over the batch
        loss = loss.sum() / len(batch["img"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["img"]))
        return loss

    def test_step(self, batch, batch_idx):
        kept = non_max_suppression(self.model(batch["img"]), conf_thres=0.001, iou_thres=0.6, max_det=100)
        self.map.update([{"boxes": k[:, :4], "scores": k[:, 4], "labels": k[:, 5].long()} for k in kept],
                        batch["targets"])

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
    model = Detector(num_classes=max(c["id"] for c in categories) + 1)
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
    parser.add_argument("--out", default="runs/ultralytics_yolo")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--train-images", type=int, default=None, help="use only this many training images")
    parser.add_argument("--test-images", type=int, default=None, help="test on only this many images")
    parser.add_argument("--steps", type=int, default=200, help="calibration steps")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    checkpoint = trained(args)
    calib_images = loader(args.data, "calib", 16)  # lightning_ptq: the images to calibrate on ("img" is read)
    results = {
        "fp32": test_map(checkpoint, args),
        # lightning_ptq: W4A4, every conv (head included; the DFL integral stays float), ranges only
        "w4a4_ranges": test_map(checkpoint, args, [QuantizationCallback(
            {"w_bits": 4, "a_bits": 4, "exclude": ("model.22.dfl.*",)}, {"steps": 0}, calib_dataloader=calib_images,
            submodule="model")]),
        # lightning_ptq: W4A4 with the regression-aware method (the yolo_w4a4 recipe's settings)
        "w4a4_reg_ptq": test_map(checkpoint, args, [RegPTQCallback(
            calib={"steps": args.steps}, calib_dataloader=calib_images, submodule="model")]),
    }
    results["retention_reg_ptq"] = results["w4a4_reg_ptq"] / results["fp32"] if results["fp32"] > 0 else 0.0
    Path(args.out, "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
