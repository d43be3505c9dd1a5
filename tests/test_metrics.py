import pytest
import torch
from torch import nn

from bdlib import metrics


def test_ba_asr_ra_on_hand_made_predictions():
    y = torch.tensor([0, 0, 1, 2, 3, 1])
    clean_pred = torch.tensor([0, 1, 1, 2, 0, 1])  # 4 of 6 right
    assert metrics.accuracy(clean_pred, y) == pytest.approx(100 * 4 / 6)
    trig_pred = torch.tensor([0, 0, 0, 2, 0, 3])  # target 0; non-target images are idx 2..5
    # idx 2..5 predicted 0, 2, 0, 3: two of four hit the target, one keeps its class (idx 3)
    assert metrics.attack_success_rate(trig_pred, y, target=0) == pytest.approx(50.0)
    assert metrics.robust_accuracy(trig_pred, y, target=0) == pytest.approx(25.0)


def test_asr_excludes_target_class_images():
    y = torch.tensor([0, 0, 0, 1])
    pred = torch.tensor([0, 0, 0, 1])
    assert metrics.attack_success_rate(pred, y, 0) == 0.0
    with pytest.raises(ValueError, match="other than the target"):
        metrics.attack_success_rate(pred[:3], y[:3], 0)


def test_der_hand_computed():
    before = {"BA": 90.0, "ASR": 100.0}
    assert metrics.der(before, {"BA": 88.0, "ASR": 4.0}) == pytest.approx((0.96 - 0.02 + 1) / 2)
    # ASR rising or BA rising contributes nothing: both terms are clipped at zero
    assert metrics.der(before, {"BA": 95.0, "ASR": 100.0}) == pytest.approx(0.5)
    assert metrics.der({"BA": 90.0, "ASR": 0.0}, {"BA": 0.0, "ASR": 100.0}) == pytest.approx(0.05)


def test_detection_precision_recall():
    flagged = torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool)
    truth = torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool)
    d = metrics.detection(flagged, truth)
    assert d["precision"] == pytest.approx(200 / 3) and d["recall"] == pytest.approx(200 / 3)
    assert metrics.detection(torch.zeros(5, dtype=torch.bool), truth)["precision"] == 0.0


def test_evaluate_with_a_hand_made_model_and_trigger():
    class Bright(nn.Module):  # predicts class 0 when the mean pixel is high, else class 1
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([m, 0.5 * torch.ones_like(m)], 1)

    model = Bright()
    model.p = nn.Parameter(torch.zeros(1))  # evaluate needs a device to read off a parameter
    x = torch.zeros(6, 1, 4, 4, dtype=torch.uint8)
    y = torch.tensor([1, 1, 1, 1, 0, 0])
    trig = lambda b: torch.full_like(b, 255)  # noqa: E731
    out = metrics.evaluate(model, x, y, target=0, trigger=trig)
    assert out["BA"] == pytest.approx(400 / 6)
    assert out["ASR"] == 100.0 and out["RA"] == 0.0


def test_mean_std_over_seeds():
    ms = metrics.mean_std([{"BA": 1.0}, {"BA": 3.0}], keys=("BA",))
    assert ms["BA"][0] == 2.0 and ms["BA"][1] == pytest.approx(2**0.5)
