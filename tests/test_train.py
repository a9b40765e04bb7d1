"""The one trainer: learns, is deterministic under a seed, and resumes to the same result."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_vgg

from vggc.data import Preprocess, Split
from vggc.errors import InputError, StaleCheckpointError
from vggc.train import TrainConfig, epoch_order, fit, freeze


def _toy_split(n=80, seed=0):
    """A learnable toy problem: class = which colour channel is bright."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randint(0, 60, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        images[i, c] += 150
    return Split(images, labels, ("r", "g", "b"), "train")


def _cfg(**kw):
    base = dict(epochs=3, batch_size=16, lr=0.05, precision="fp32", seed=3, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _model():
    return make_tiny_vgg(num_classes=3, seed=1).train()


def test_fit_learns_toy_problem():
    split, pre = _toy_split(), Preprocess()
    model = _model()
    res = fit(model, split, pre, _cfg(epochs=4))
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    with torch.no_grad():
        acc = (model(pre(split.images)).argmax(1) == split.labels).float().mean()
    assert acc > 0.9
    assert not model.training


def test_fit_is_deterministic_and_resume_matches(tmp_path):
    split, pre = _toy_split(), Preprocess()
    a = _model()
    fit(a, split, pre, _cfg())

    b = _model()
    ckpt = tmp_path / "run.ckpt"

    def stop_after_first(rec):
        if rec["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(b, split, pre, _cfg(), checkpoint=ckpt, on_epoch=stop_after_first)
    assert ckpt.is_file() and not list(tmp_path.glob(".tmp-*"))
    c = _model()
    res = fit(c, split, pre, _cfg(), checkpoint=ckpt, resume=True)
    assert res.resumed_from == 1 and res.epochs_run == 2
    # the history keeps the epoch from before the kill, so the totals cover the whole training
    doc = res.to_dict()
    assert [h["epoch"] for h in doc["history"]] == [1, 2, 3]
    assert doc["total_seconds"] == pytest.approx(sum(h["seconds"] for h in res.history), abs=0.01)
    assert doc["total_seconds"] >= res.history[0]["seconds"] > 0 and doc["total_cpu_seconds"] > 0
    for k, v in a.state_dict().items():
        assert torch.allclose(v.float(), c.state_dict()[k].float(), atol=1e-6), k
    # a checkpoint is only resumed by the run that wrote it: other settings or widths are refused
    with pytest.raises(StaleCheckpointError, match=r"other training settings \(epochs 3 -> 5\)"):
        fit(_model(), split, pre, _cfg(epochs=5), checkpoint=ckpt, resume=True)
    with pytest.raises(StaleCheckpointError, match="other layers or widths"):
        fit(make_tiny_vgg(num_classes=3, widths=(8, "M", 16, "M", 16, 16, "M", 32, 32, "M", 32, 16, "M"), seed=1),
            split, pre, _cfg(), checkpoint=ckpt, resume=True)


def test_kill_inside_an_epoch_resumes_from_the_mid_epoch_checkpoint(tmp_path):
    # toy epochs have 5 steps; checkpoint_minutes=0 writes a checkpoint after every step but the last
    split, pre = _toy_split(), Preprocess()

    def ce(net, x, y):
        return torch.nn.functional.cross_entropy(net(x), y), {}

    a = _model()
    ref = fit(a, split, pre, _cfg(), loss_fn=ce)
    calls = {"n": 0}

    def dies_in_epoch_2(net, x, y):
        calls["n"] += 1
        if calls["n"] == 5 + 4:  # epoch 2, step 3 (0-based): steps 0-2 of epoch 2 are checkpointed
            raise KeyboardInterrupt
        return ce(net, x, y)

    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), split, pre, _cfg(), checkpoint=ckpt, loss_fn=dies_in_epoch_2, checkpoint_minutes=0)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 1 and saved["partial"]["step"] == 3 and len(saved["history"]) == 1
    c = _model()
    res = fit(c, split, pre, _cfg(), checkpoint=ckpt, resume=True, loss_fn=dies_in_epoch_2, checkpoint_minutes=0)
    assert res.resumed_from == 1 and calls["n"] == 5 + 4 + (5 - 3) + 5  # only epoch 2's last 2 steps rerun
    for k, v in a.state_dict().items():
        assert torch.equal(v, c.state_dict()[k]), k  # bit-identical to the run that never stopped
    assert [h["loss"] for h in res.history] == pytest.approx([h["loss"] for h in ref.history], abs=1e-6)
    final = torch.load(ckpt, weights_only=True)
    assert final["epoch"] == 3 and final["partial"] is None
    # with checkpoint_minutes=None only epoch ends are saved
    calls["n"] = 0
    ckpt2 = tmp_path / "epochs.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), split, pre, _cfg(), checkpoint=ckpt2, loss_fn=dies_in_epoch_2, checkpoint_minutes=None)
    saved = torch.load(ckpt2, weights_only=True)
    assert saved["epoch"] == 1 and saved["partial"] is None


def test_freeze_features_trains_only_classifier():
    split, pre = _toy_split(), Preprocess()
    model = freeze(_model(), "features")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, split, pre, _cfg(epochs=1))
    after = model.state_dict()
    assert torch.equal(before["features.0.weight"], after["features.0.weight"])
    assert torch.equal(before["features.1.running_mean"], after["features.1.running_mean"])  # frozen BN stays put
    assert not torch.equal(before["classifier.0.weight"], after["classifier.0.weight"])


def test_distributed_shards_cover_the_epoch():
    n = 103
    shards = [epoch_order(n, 0, 5, r, 2) for r in range(2)]
    assert shards[0].numel() == shards[1].numel() == 52
    assert set(torch.cat(shards).tolist()) == set(range(n))


def test_bad_config():
    with pytest.raises(InputError):
        TrainConfig(epochs=0)
    with pytest.raises(InputError):
        TrainConfig(precision="int4")
    with pytest.raises(InputError, match="fewer than one batch"):
        fit(_model(), _toy_split(8), Preprocess(), _cfg(batch_size=16))
