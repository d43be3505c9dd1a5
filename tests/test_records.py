"""Defense records: every defense declares one, and any record goes to the store and back."""

import json
from dataclasses import dataclass

import torch
from defense_context import tiny_cnn
from torch import nn

from bdlib import defenses
from bdlib.defenses.base import record_from_store, record_kinds, record_to_store


@dataclass(frozen=True)
class Sample:
    mask: torch.Tensor
    scores: dict[str, torch.Tensor]
    student: nn.Module
    spare: torch.Tensor | None
    target: int
    rows: list[dict]


def test_a_record_round_trips_through_tensors_and_json():
    model = tiny_cnn(3)
    rec = Sample(
        mask=torch.rand(1, 4, 4),
        scores={"stage3.0": torch.arange(3.0), "stage2.0": torch.ones(2)},  # dotted keys, not sorted
        student=model,
        spare=None,
        target=4,
        rows=[{"epoch": 1, "loss": 0.5, "student": {"BA": 80.0}}],
    )
    assert record_kinds(Sample) == {
        "mask": "tensor",
        "scores": "tensors",
        "student": "model",
        "spare": "tensor",
        "target": "json",
        "rows": "json",
    }
    tensors, meta = record_to_store(rec)
    assert all(t.device.type == "cpu" for t in tensors.values())
    meta = json.loads(json.dumps(meta))  # what the store keeps is plain JSON

    def load(state):
        m = tiny_cnn(0)
        m.load_state_dict(state)
        return m

    back = record_from_store(Sample, tensors, meta, load)
    assert torch.equal(back.mask, rec.mask) and back.spare is None
    assert list(back.scores) == ["stage3.0", "stage2.0"]
    assert all(torch.equal(back.scores[k], v) for k, v in rec.scores.items())
    assert all(torch.equal(back.student.state_dict()[k], v) for k, v in model.state_dict().items())
    assert back.target == 4 and back.rows == rec.rows


def test_every_defense_declares_a_record():
    for name, d in defenses.REGISTRY.items():
        assert d.Record is not None, name
        assert set(record_kinds(d.Record).values()) <= {"tensor", "tensors", "model", "json"}, name
    assert record_to_store(None) == ({}, None) and record_from_store(None, {}, None, None) is None
