"""The demo runs end to end on the shipped prior and reports a table (tiny settings here; the real run is the README's)."""
import json

import torch

from ld3m_fast.demo import DemoSettings, format_table, prior_path, run_demo
from ld3m_fast.models import load_ldm


def test_shipped_prior_loads_and_fits_the_embedded_data():
    assert prior_path().is_file()
    model = load_ldm("fashion-mnist-prior")
    assert model.config.image_channels == 1 and model.config.image_size == 28 and model.config.n_classes == 10
    assert next(model.parameters()).dtype == torch.float32


def test_demo_end_to_end(tmp_path):
    tiny = DemoSettings(ipcs=(1,), iterations=2, batch_real=8, net_width=16, archs=("ConvNet",), repeats=2,
                        eval_epochs=2, eval_widths=(("ConvNet", 16),), chunk_size=10)
    report = run_demo(tmp_path, settings=tiny, progress=False)
    methods = {(r["method"], r["ipc"], r["arch"]) for r in report["rows"]}
    assert methods == {("ld3m-dm", 1, "ConvNet"), ("pixel-dm", 1, "ConvNet"), ("random-real", 1, "ConvNet")}
    assert all(len(r["accuracies"]) == 2 and 0 <= r["mean"] <= 1 for r in report["rows"])
    assert json.loads((tmp_path / "report.json").read_text())["rows"] == report["rows"]
    assert (tmp_path / "ld3m-dm_ipc1" / "all.png").is_file() and (tmp_path / "pixel-dm_ipc1" / "class_000.png").is_file()
    table = format_table(report)
    assert table.splitlines()[0] == "| method | IPC | ConvNet |" and len(table.splitlines()) == 5
