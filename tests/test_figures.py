import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bdlib import figures  # noqa: E402
from bdlib.config import resolve  # noqa: E402


def test_save_writes_png_pdf_without_volatile_metadata_and_records_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("BDLIB_FIGURES", str(tmp_path))
    monkeypatch.setenv("BDLIB_NOTEBOOK", "99_test")
    monkeypatch.setenv("BDLIB_PARAMETERS", json.dumps({"profile": "smoke"}))
    cfg = resolve("smoke")
    blobs = []
    for _ in range(2):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        paths = figures.save(fig, "line", cfg)
        blobs.append([p.read_bytes() for p in paths])
    assert blobs[0] == blobs[1], "saving the same figure twice gave different bytes"
    assert b"CreationDate" not in blobs[0][1] and blobs[0][0][:4] == b"\x89PNG"
    figures.save_metrics("numbers", {"BA": 90.0}, cfg)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest) == {"line", "numbers"}
    assert manifest["line"]["notebook"] == "99_test" and manifest["line"]["files"] == ["line.png", "line.pdf"]
    assert manifest["numbers"]["parameters"] == {"profile": "smoke"}
    assert manifest["line"]["config_key"] == figures.config_key(cfg)
    assert json.loads((tmp_path / "numbers.json").read_text())["metrics"] == {"BA": 90.0}


def test_log_x_curves_label_exactly_the_measured_budgets():
    from bdlib import plots

    recs = [{"clean %": b, "a_BA": 80.0 + b, "a_ASR": 10.0 / b, "a_RA": 50.0} for b in (0.5, 1.0, 2.0, 5.0)]
    fig = plots.curves(recs, x="clean %", series={"a": "a_"}, logx=True)
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "1", "2", "5"]
        assert not ax.xaxis.get_minor_ticks() or not any(t.label1.get_visible() and t.label1.get_text()
                                                          for t in ax.xaxis.get_minor_ticks())


def test_embedding_cache_key_follows_the_weights():
    import copy

    import torch

    from bdlib.models import SmallCNN
    from bdlib.report import _weights_digest

    torch.manual_seed(0)
    a = SmallCNN(width=4)
    b = copy.deepcopy(a).to(memory_format=torch.channels_last)
    assert _weights_digest(a) == _weights_digest(b)  # memory layout is not part of the model
    with torch.no_grad():
        b.fc.bias[0] += 1e-3
    assert _weights_digest(a) != _weights_digest(b)
