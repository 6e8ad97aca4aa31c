"""LayerwiseSearch on a LightningModule that only knows its own validation metric."""
import copy
import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_ptq.callbacks import LayerwiseSearch, MetricNotLoggedError, QuantizationCallback
from lightning_ptq.quant import quantized_layers


class BlobModule(L.LightningModule):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val/acc", (self.net(x).argmax(1) == y).float().mean(), batch_size=len(x))


def _trainer(tmp_path, callbacks):
    return L.Trainer(default_root_dir=tmp_path, callbacks=callbacks, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu")


def _loaders(blobs_task):
    model, calib, val = blobs_task
    x = torch.cat([b[0] for b in val])
    y = torch.cat([b[1] for b in val])
    return DataLoader(TensorDataset(x, y), batch_size=250), [calib[0][0]]


def test_search_runs_inside_validate_and_the_validation_reports_the_searched_model(blobs_task, tmp_path):
    model = copy.deepcopy(blobs_task[0])  # the callbacks quantize it in place
    val, calib = _loaders(blobs_task)
    quant = QuantizationCallback(dict(w_bits=2, a_bits=3, w_init="minmax", a_init="minmax", learnable=False),
                                 calib_dataloader=calib, submodule="net")
    search = LayerwiseSearch("val/acc", config=dict(threshold=0.001), val_dataloader=val, calib_dataloader=calib,
                             submodule="net", output_dir=tmp_path / "out")
    module = BlobModule(model)
    trainer = _trainer(tmp_path, [quant, search])
    metrics = trainer.validate(module, dataloaders=val, verbose=False)[0]
    result = search.result
    assert result.final_metric > result.start_metric
    assert metrics["val/acc"] == pytest.approx(result.final_metric)  # the outer validation sees the result
    assert module.trainer is trainer
    saved = json.loads((tmp_path / "out" / "search.json").read_text())
    assert saved["final_metric"] == pytest.approx(result.final_metric)
    params = json.loads((tmp_path / "out" / "layer_params.json").read_text())
    assert set(params["layers"]) == set(quantized_layers(module.net))
    assert (tmp_path / "out" / "sensitivity.png").is_file()


def test_a_metric_that_is_never_logged_is_named(blobs_task, tmp_path):
    model = copy.deepcopy(blobs_task[0])  # the callbacks quantize it in place
    val, calib = _loaders(blobs_task)
    quant = QuantizationCallback(dict(w_bits=4, a_bits=4), calib_dataloader=calib, submodule="net")
    search = LayerwiseSearch("val/accuracy", val_dataloader=val, calib_dataloader=calib, submodule="net")
    with pytest.raises(MetricNotLoggedError, match=r"monitor='val/accuracy' is never logged by "
                                                   r"BlobModule.validation_step; it logs \['val/acc'\]"):
        _trainer(tmp_path, [quant, search]).validate(BlobModule(model), dataloaders=val, verbose=False)


def test_without_a_quantized_model_the_search_says_what_to_do(blobs_task, tmp_path):
    model = copy.deepcopy(blobs_task[0])  # the callbacks quantize it in place
    val, calib = _loaders(blobs_task)
    search = LayerwiseSearch("val/acc", val_dataloader=val, calib_dataloader=calib, submodule="net")
    with pytest.raises(ValueError, match="put a QuantizationCallback before it"):
        _trainer(tmp_path, [search]).validate(BlobModule(model), dataloaders=val, verbose=False)
