"""The `paper` profile's code path, kept working on a CPU.

The notebooks whose figures depend on the model or the images run through the real runner on
`--profile paper` (CIFAR-10, ResNet-18, 3-channel triggers, Narcissus' CIFAR-100 surrogate, NONE
on the ResNet convs, ANP on its BN channels...): 01 (every attack's ResNet-18 victim, RGB trigger
gallery, t-SNE of ResNet features), 04 (NONE's 15 ResNet convs in rows, RGB flagged images) and
06 (every defense on a ResNet-18 victim, the protocol on FT). Notebooks 02, 03 and 05 plot
metrics of runs, or images through the same helpers as 01 and 04 (05's inverted triggers): their
code runs on smoke (tests/test_notebooks.py), and NT-ML (with the paper profile's KD teacher) and
MCLDef (trigger inversion and purification) run on ResNet-18 in 06's grid here. The data are tiny CIFAR-10 / CIFAR-100
files in the real python-pickle formats (written by tests/test_data.py's writers) under a
temporary ``$BDLIB_DATA``, every budget shrunk by overrides so the module takes about a minute on
one core. Only sizes change; no method's code path is switched off. Then: every attack and defense
ran on ResNet-18 with 3×32×32 inputs (read from the store), each attack's trigger changes the
images, and a missing dataset fails in ``bdlib.setup`` (a notebook's setup cell) before any
training.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from poisoning_checks import assert_every_attack_poisons
from test_data import make_cifar10, make_cifar100

from bdlib import attacks, data, defenses
from bdlib.runner.notebooks import notebooks
from bdlib.study import tune

REPO = Path(__file__).resolve().parent.parent
SEEDS = [0]

# The paper profile with every size shrunk; the method code paths are the paper profile's own.
OVERRIDES = {
    "n_train": 20,
    "n_test": 10,
    "train.epochs": 1,
    "train.batch_size": 64,
    "train.eval_batch_size": 256,
    "attacks.trojan.steps": 2,
    "attacks.trojan.n_background": 8,
    # 1 poison among 2 target-class images; the surrogate sees 16 CIFAR-100 images. δ must move
    # the uint8 pixels after one RAdam step (whose size is lr·gradient), hence the large synth_lr.
    "attacks.narcissus.poison_rate": 0.05,
    "attacks.narcissus.pood_size": 16,
    "attacks.narcissus.surrogate_epochs": 1,
    "attacks.narcissus.warmup_epochs": 1,
    "attacks.narcissus.synth_epochs": 1,
    "attacks.narcissus.synth_batch": 32,
    "attacks.narcissus.synth_lr": 50.0,
    "defenses.ntml.ml_epochs": 1,
    "defenses.none.epochs2": 1,
    "defenses.mcldef.inv_epochs": 1,
    "defenses.mcldef.inv_batch_size": 2,
    "defenses.mcldef.epochs": 1,
    "defenses.mcldef_detect.inv_steps": 1,
    "defenses.mcldef_detect.inv_batch_size": 1,
    "defenses.mcldef_detect.epochs": 1,
    "defenses.none_published.epochs2": 1,
    "defenses.nad.steps": 1,
    "defenses.nad.teacher_steps": 1,
    "defenses.anp.steps": 2,
    "defenses.anp.batch_size": 10,
    "defenses.ibau.rounds": 1,
    "defenses.ibau.batches": 1,
    "defenses.ibau.fp_iters": 1,
    "defenses.ibau.batch_size": 10,
    "defenses.ft.steps": 1,
    # The comparison protocol on one tuning seed and attack, FT's grid's two ends: the protocol's
    # code path on ResNet-18 (every defense's sweep and NT-ML's readings run on smoke).
    "tuning.defenses": ["ft"],
    "tuning.seeds": [100],
    "tuning.attacks": ["badnets"],
    "tuning.variant_attacks": ["badnets"],
    "tuning.grid_points": 2,
}
# Runner calls (the runner gives each notebook the parameters it declares): 01 trains a victim for
# every attack; 04 and 06 run on BadNets, 06 every defense at one clean budget.
BADNETS = ["-p", "attacks", '["badnets"]']
CALLS = [
    (["01"], []),
    (["04", "06"], [*BADNETS, "-p", "budgets", '{"clean": [0.05], "attacks": ["badnets"], "seeds": [0]}']),
]
PAPER_NOTEBOOKS = [stem for stems, _ in CALLS for stem in stems]


def write_data(root: Path, cifar100: bool = True) -> None:
    make_cifar10(root / "cifar-10-batches-py", n_per_batch=40, n_test=60, seed=11)
    if cifar100:
        make_cifar100(root / "cifar-100-python", n_train=100, n_test=10, seed=12)


def _runner(tmp: Path, stems: list[str], extra: list[str], data_root: Path, cache: Path):
    env = {**os.environ, "BDLIB_DATA": str(data_root), "BDLIB_CACHE": str(cache)}
    cmd = [
        sys.executable,
        "-m",
        "bdlib",
        "run",
        *stems,
        "--profile",
        "paper",
        "-p",
        "device",
        '"cpu"',
        "-p",
        "seeds",
        json.dumps(SEEDS),
        "-p",
        "overrides",
        json.dumps(OVERRIDES),
        *extra,
        "--figures",
        str(tmp / "figures"),
        "--out",
        str(tmp / "executed"),
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    write_data(tmp / "data")
    start = time.perf_counter()
    for stems, extra in CALLS:
        proc = _runner(tmp, stems, extra, tmp / "data", tmp / "cache")
        assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"paper path: all notebooks in {time.perf_counter() - start:.0f} s")
    return tmp


def _entries(cache: Path, kind: str) -> list[dict]:
    metas = [json.loads(p.read_text()) for p in cache.glob("*/*/meta.json")]
    return [m for m in metas if m["kind"] == kind]


def test_the_model_dependent_notebooks_run_on_the_paper_path(paper_run):
    manifest = json.loads((paper_run / "figures" / "manifest.json").read_text())
    for nb in notebooks(PAPER_NOTEBOOKS):
        mine = {k: v for k, v in manifest.items() if v["notebook"] == nb.stem}
        assert mine, f"{nb.stem} saved nothing"
        assert all(v["profile"] == "paper" for v in mine.values())
        assert all((paper_run / "figures" / f).stat().st_size > 0 for v in mine.values() for f in v["files"])
    body = json.loads((paper_run / "figures" / "06_comparisons.json").read_text())
    ran = {(r["attack"], r["defense"]) for r in body["metrics"]["grid"]}
    assert ran == {("badnets", d) for d in ["undefended", "clean model", *defenses.REGISTRY]}
    # The protocol ran on ResNet-18 within its scope: FT's grid ends on the tuning seed.
    tuned = {(r["defense"], r["seed"]) for r in body["metrics"]["tuning"]}
    assert tuned == {("ft", 100)} and len(body["metrics"]["tuning"]) == len(tune.settings("ft", 2))


def test_every_attack_and_defense_ran_on_resnet18_with_3x32x32_inputs(paper_run):
    cache = paper_run / "cache"
    victims = _entries(cache, "poisoned_model")
    assert {v["spec"]["attack"] for v in victims} == set(attacks.REGISTRY)
    assert all(v["spec"]["model"] == "resnet18" and v["spec"]["dataset"] == "cifar10" for v in victims)
    triggers = _entries(cache, "trigger")
    assert {t["spec"]["attack"] for t in triggers} == set(attacks.REGISTRY)
    assert all(t["spec"]["shape"] == [3, 32, 32] for t in triggers)
    narcissus = [t for t in triggers if t["spec"]["attack"] == "narcissus"]
    assert narcissus and all(t["spec"]["params"]["pood"] == "cifar100" for t in narcissus)
    defended = _entries(cache, "defended_model")
    assert {d["spec"]["defense"] for d in defended} == set(defenses.REGISTRY)
    victim_keys = {v["key"] for v in victims}
    assert all(d["spec"]["victim"] in victim_keys for d in defended)
    # ResNet-18 really ran: NONE monitored its 15 convs of layer2-layer4.
    none = [d for d in defended if d["spec"]["defense"] == "none"]
    assert all(len(d["record"]["json"]["monitored"]) == 15 for d in none)
    anp = [d for d in defended if d["spec"]["defense"] == "anp"]
    assert all(d["record"]["json"]["channels"] == 4800 for d in anp)  # BN channels of ResNet-18 (stem included)


def test_each_attacks_trigger_changes_the_images(paper_run, monkeypatch):
    from bdlib import experiment as ex
    from bdlib import session

    monkeypatch.setenv("BDLIB_DATA", str(paper_run / "data"))
    monkeypatch.setenv("BDLIB_CACHE", str(paper_run / "cache"))
    data.clear_cache()
    ex.store.cache_clear()
    ex._run_data.cache_clear()
    stored = len(list((paper_run / "cache").glob("*/*/meta.json")))
    try:
        cfg = session.setup("paper", device="cpu", overrides=OVERRIDES, progress=False)
        assert ex.run_data(cfg).shape == (3, 32, 32)
        assert_every_attack_poisons(ex, cfg)
        # Every trigger came from the store the notebooks filled: nothing was recomputed here.
        assert len(list((paper_run / "cache").glob("*/*/meta.json"))) == stored
    finally:
        data.clear_cache()
        ex.store.cache_clear()
        ex._run_data.cache_clear()


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """The tiny CIFAR files under $BDLIB_DATA, a refusing download, fresh caches."""
    from bdlib import experiment as ex

    def refuse(name, root):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(data, "_download", refuse)
    monkeypatch.setenv("BDLIB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("BDLIB_CACHE", str(tmp_path / "cache"))
    for clear in (data.clear_cache, ex.store.cache_clear, ex._run_data.cache_clear):
        clear()
    yield tmp_path / "data"
    for clear in (data.clear_cache, ex.store.cache_clear, ex._run_data.cache_clear):
        clear()


def test_setup_names_every_missing_dataset_in_one_message(tiny_data):
    from bdlib import session

    tiny_data.mkdir()
    with pytest.raises(data.DataNotFound) as err:
        session.setup("paper", device="cpu", overrides=OVERRIDES)
    msg = str(err.value)
    assert msg.startswith("profile 'paper' needs data that is not here") and f"BDLIB_DATA={tiny_data}" in msg
    for title, folder, files in (
        ("CIFAR-10", "cifar-10-batches-py", "data_batch_1"),
        ("CIFAR-100", "cifar-100-python", "meta"),
    ):
        assert f"{title} not found" in msg and f"{folder}/" in msg and files in msg
    write_data(tiny_data, cifar100=False)
    data.clear_cache()
    # BadNets alone does not need CIFAR-100; every attack (Narcissus' surrogate) does.
    cfg = session.setup("paper", device="cpu", overrides=OVERRIDES, attack_names=["badnets"])
    assert session.required_datasets(cfg, ["badnets"]) == ["cifar10"]
    assert session.required_datasets(cfg) == ["cifar10", "cifar100"]
    with pytest.raises(data.DataNotFound, match="CIFAR-100 not found"):
        session.setup("paper", device="cpu", overrides=OVERRIDES)
    # The check comes before any training: nothing reached the store. (A notebook's setup cell is
    # where bdlib.setup runs; the runner reports a failing cell as one paragraph, in
    # tests/test_failing_well.py.)
    assert not list((tiny_data.parent / "cache").glob("*/*/meta.json"))
    with pytest.raises(ValueError, match="badnet.*choose one of"):
        session.setup("paper", device="cpu", overrides=OVERRIDES, attack_names=["badnet"])


def test_paper_on_the_cpu_warns_with_an_estimate(tiny_data):
    from bdlib import session

    write_data(tiny_data)
    with pytest.warns(
        UserWarning, match=r"profile 'paper' on the CPU: .* 100 epochs x 50,000 images\) takes about \d+ h"
    ):
        session.setup("paper", device="cpu", overrides={"n_train": 50000})
    cfg = session.setup("paper", device="cpu", overrides=OVERRIDES)  # shrunk: no warning needed
    assert session.cpu_estimate(cfg) is None


def test_describe_prints_the_seeds_used_and_new_model_keeps_the_global_rng(tiny_data):
    from bdlib import experiment as ex
    from bdlib import session
    from bdlib.report.common import describe, seed_list
    from bdlib.study.measure import kernels

    write_data(tiny_data)
    cfg = session.setup("paper", device="cpu", overrides=OVERRIDES)
    assert "seeds [0, 1, 2]" in describe(cfg, kernels(cfg))
    text = describe(cfg, kernels(cfg), ["none"], seed_list(cfg, [7, 3]))
    assert "seeds [7, 3]" in text and "seeds [0, 1, 2]" not in text
    assert "float32, deterministic kernels" in text
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = ex.new_model(cfg, 5)
    assert torch.equal(torch.rand(3), expected), "building a model moved the global random state"
    b = ex.new_model(cfg, 5)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
