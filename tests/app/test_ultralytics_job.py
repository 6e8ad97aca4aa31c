"""An Ultralytics YOLO through the whole job: built from Ultralytics' yaml, pretrained by the
project with Ultralytics' loss, quantized head included (the DFL conv float), calibrated under the
filtered global loss; a user's Ultralytics .pt (a pickle) only with model.trust_checkpoint=true."""
import pytest
import torch

pytest.importorskip("ultralytics")  # the ultralytics extra (installed by the README's command)

from lightning_ptq.detection import UntrustedCheckpointError  # noqa: E402
from lightning_ptq.hydra_setup import compose_config  # noqa: E402
from lightning_ptq.job import run_job  # noqa: E402
from lightning_ptq.quant.laq import LogAffineQuantizer  # noqa: E402

TINY = ["logger=none", "trainer.enable_progress_bar=false", "data.generator_kwargs={splits: {train: 16, calib: 8, val: 8, test: 8}}",
        "model.train.epochs=1", "model.train.batch_size=8", "model.train.val_every=1", "calib.num_images=8",
        "calib.init_batches=1", "calib.steps=3", "calib.batch_size=4", "eval.num_vis_images=2", "quant.w_init=minmax"]


def test_yolov8n_w4a4_runs_through_the_job(tmp_path):
    cfg = compose_config(["+recipe=yolov8n_w4a4", f"cache_dir={tmp_path / 'cache'}", *TINY])
    results = run_job(cfg, tmp_path / "run")
    assert (results["w_bits"], results["a_bits"]) == (4, 4) and results["size_ratio"] > 6
    assert len(list((tmp_path / "cache" / "models").glob("ultralytics-*.pt"))) == 1  # pretrained and cached
    state = torch.load(tmp_path / "run" / "quantized_state_dict.pt", weights_only=True)
    assert any(k.startswith("model.22.cv3.0.2.weight_quant.") for k in state)  # the head's last class conv
    assert not any(k.startswith("model.22.dfl.") and "quant" in k for k in state)  # the DFL conv float
    assert any(k.startswith("model.22.cv2.0.2.weight_quant.log2_k") for k in state)  # LAQ on the head


def test_an_ultralytics_pickle_needs_trust(tmp_path):
    from ultralytics.nn.tasks import DetectionModel

    torch.save({"model": DetectionModel("yolov8n.yaml", nc=6, verbose=False)}, tmp_path / "best.pt")
    cfg = compose_config(["+recipe=yolov8n_w4a4", f"cache_dir={tmp_path / 'cache'}", *TINY,
                          f"model.checkpoint={tmp_path / 'best.pt'}"])
    with pytest.raises(UntrustedCheckpointError, match=r"set model.trust_checkpoint=true"):
        run_job(cfg, tmp_path / "run")
