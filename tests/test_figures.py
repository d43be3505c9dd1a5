import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bdlib import figures  # noqa: E402
from bdlib.profiles import resolve  # noqa: E402


def test_save_writes_png_pdf_without_volatile_metadata_and_records_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("BDLIB_FIGURES", str(tmp_path))
    monkeypatch.setenv("BDLIB_NOTEBOOK", "99_test")
    monkeypatch.setenv("BDLIB_PARAMETERS", json.dumps({"profile": "smoke"}))
    cfg = resolve("smoke")
    blobs = []
    for _ in range(2):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        assert figures.save(fig, "line", cfg) is None  # a cell ending in save() echoes no paths
        blobs.append([(tmp_path / f"line.{ext}").read_bytes() for ext in ("png", "pdf")])
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

    recs = [{"clean %": b, "series": "a", "BA": 80.0 + b, "ASR": 10.0 / b, "RA": 50.0} for b in (0.5, 1.0, 2.0, 5.0)]
    fig = plots.curves(recs, x="clean %", logx=True)
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "1", "2", "5"]
        assert not ax.xaxis.get_minor_ticks() or not any(
            t.label1.get_visible() and t.label1.get_text() for t in ax.xaxis.get_minor_ticks()
        )


def test_integer_x_curves_tick_whole_numbers_only():
    from bdlib import plots

    recs = [{"round": r, "series": "NONE", "BA": 80.0, "ASR": 90.0 - 80 * r, "RA": 5.0 + 70 * r} for r in (0, 1)]
    fig = plots.curves(recs, x="round")
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    plt.close(fig)


def test_embedding_cache_key_follows_the_weights():
    import copy

    import torch

    from bdlib.models import SmallCNN, cpu_state
    from bdlib.store import tensors_digest

    torch.manual_seed(0)
    a = SmallCNN(width=4)
    b = copy.deepcopy(a).to(memory_format=torch.channels_last)
    assert tensors_digest(cpu_state(a)) == tensors_digest(cpu_state(b))  # memory layout is not part of the model
    with torch.no_grad():
        b.fc.bias[0] += 1e-3
    assert tensors_digest(cpu_state(a)) != tensors_digest(cpu_state(b))


def test_flagged_examples_group_poisons_by_the_defense_flags(monkeypatch):
    from types import SimpleNamespace

    import torch

    from bdlib import experiment, plots
    from bdlib.report import none
    from bdlib.study import measure

    y = torch.tensor([0, 1, 2, 2, 1, 0])
    x = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    poison_idx = torch.tensor([False, True, True, True, False, True])
    flagged = torch.tensor([True, True, False, False, False, True])  # index 0 is a false alarm
    monkeypatch.setattr(experiment, "run_data", lambda cfg: SimpleNamespace(y_train=y, classes=("a", "b", "c")))
    monkeypatch.setattr(
        experiment, "poisoned_model", lambda cfg: SimpleNamespace(poisoned=SimpleNamespace(x=x, poison_idx=poison_idx))
    )
    training = measure.training_set(None)  # the poisoned set, its true labels and class names, from the store
    assert training["x"] is x and training["poison_idx"] is poison_idx and training["y"] is y
    run = SimpleNamespace(cfg=None, record=SimpleNamespace(flagged=flagged))
    rows, captions, missed = none.flagged_examples(run, training)
    assert rows["caught"][:, 0, 0, 0].tolist() == [1, 5] and captions["caught"] == ["b", "a"]
    assert rows["missed"][:, 0, 0, 0].tolist() == [2, 3] and captions["missed"] == ["c", "c"]
    assert missed == {"a": 0, "b": 0, "c": 2}
    rows["missed"] = rows["missed"][:1]  # a shorter row leaves its last panel empty
    fig = plots.image_rows(rows, {"caught": captions["caught"], "missed": captions["missed"][:1]})
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 4 and len(shown) == 3
    assert [ax.get_title() for ax in shown] == ["b", "a", "c"]
    assert fig.axes[0].get_ylabel() == "caught" and fig.axes[2].get_ylabel() == "missed"
    plt.close(fig)
