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
