"""The search's console table shows whole layer names, however narrow the console."""
from rich.console import Console

from lightning_ptq.search.layerwise import LayerRecord, SearchResult
from lightning_ptq.search.report import layer_table

NAMES = ["model.backbone.body.layer3.0.downsample.0", "model.head.classification_head.conv.3.0",
         "model.head.regression_head.bbox_ctrness"]


def test_layer_names_are_never_cut():
    result = SearchResult(0.5, 0.4, 0.45, 0.48, False, [
        LayerRecord(name, 0.01 * i, target=True, first="percentile", chosen="w8a8", w_bits=8, a_bits=8, weight_count=10,
                    metric_after=0.45, tries=3) for i, name in enumerate(NAMES)])
    console = Console(width=80, record=True, color_system=None)
    console.print(layer_table(result, "mAP"))
    text = console.export_text()
    flat = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.count("│") > 2)
    for name in NAMES:
        assert name in flat, name  # folded onto two lines at most, but whole
