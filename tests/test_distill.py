"""Distillation: KD loss math, the CIFAR MobileNetV2 student, the distill CLI, resume and DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner
from conftest import ROOT, make_imagefolder, make_tiny_vgg

from vggc.artifacts import sha256_file
from vggc.cli import main
from vggc.compress.distill import DistillLoss, KDConfig, distill, distillation_loss, distributed_session, kd_loss
from vggc.errors import InputError, ModelFormatError
from vggc.models import count_macs, count_params, load_weights, mobilenet_v2_cifar, model_from_state_dict
from vggc.models.mobilenet import (
    MobileNetV2Config,
    build_mobilenet_v2,
    mobilenet_config_from_state_dict,
    mobilenet_v2_config,
)
from vggc.train import TrainConfig, fit

SMALL = 0.25  # student width for the fast tests (~9.5 M MACs)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not thrash when other jobs share the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- KD loss math

def _logits(seed, n=6, c=10, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * scale


@pytest.mark.parametrize("T", [1.0, 4.0, 8.0])
def test_kd_loss_is_t_squared_times_kl(T):
    s, t = _logits(0), _logits(1)
    p_t = F.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean()
    assert torch.allclose(kd_loss(s, t, T), T * T * kl, atol=1e-6)
    assert float(kd_loss(t, t, T)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(s, t, T)) > 0


def test_t_squared_keeps_gradient_scale():
    # d KL / d s = (p_s - p_t) / T ~ (s - t) / (C T^2) for large T (centred logits): the T^2 factor
    # keeps the soft-target gradient independent of T; without it it would shrink as 1/T^2.
    s, t = _logits(2, scale=0.5).requires_grad_(), _logits(3, scale=0.5)
    grads = {}
    for T in (10.0, 20.0):
        g, = torch.autograd.grad(kd_loss(s, t, T), s)
        grads[T] = g.norm()
    assert float(grads[20.0] / grads[10.0]) == pytest.approx(1.0, rel=0.05)
    c = s.shape[1]
    limit = ((s - s.mean(1, keepdim=True)) - (t - t.mean(1, keepdim=True))) / (c * s.shape[0])
    assert torch.allclose(torch.autograd.grad(kd_loss(s, t, 50.0), s)[0], limit, atol=2e-3)


def test_alpha_endpoints_and_mix():
    s, t, y = _logits(4), _logits(5), torch.tensor([0, 1, 2, 3, 4, 5])
    ce = F.cross_entropy(s, y, label_smoothing=0.1)
    loss0, parts0 = distillation_loss(s, t, y, KDConfig(4.0, 0.0), 0.1)
    assert torch.allclose(loss0, ce)
    loss0_noteacher, parts = distillation_loss(s, None, y, KDConfig(4.0, 0.0), 0.1)
    assert torch.allclose(loss0_noteacher, ce) and set(parts) == {"ce"}
    loss1, parts1 = distillation_loss(s, t, y, KDConfig(4.0, 1.0), 0.1)
    assert torch.allclose(loss1, kd_loss(s, t, 4.0))
    mix, parts = distillation_loss(s, t, y, KDConfig(4.0, 0.9), 0.1)
    assert torch.allclose(mix, 0.9 * kd_loss(s, t, 4.0) + 0.1 * ce)
    assert set(parts) == {"kd", "ce", "agree"}
    assert float(parts["agree"]) == pytest.approx(float((s.argmax(1) == t.argmax(1)).float().mean()))
    with pytest.raises(InputError, match="alpha"):
        KDConfig(alpha=1.5)
    with pytest.raises(InputError, match="temperature"):
        KDConfig(temperature=0)


def test_teacher_is_frozen_and_gets_no_gradient():
    teacher = make_tiny_vgg(seed=1).train()  # trainer/user may have left it in train mode
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = mobilenet_v2_cifar(SMALL).train()
    loss_fn = DistillLoss(teacher, KDConfig(4.0, 0.9))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    loss, parts = loss_fn(student, x, y)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert not teacher.training  # put back in eval: BN running stats untouched
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert {"kd", "ce", "agree"} <= set(parts)


def test_alpha_zero_never_runs_the_teacher():
    teacher = make_tiny_vgg()
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    loss_fn = DistillLoss(teacher, KDConfig(4.0, 0.0))
    loss, parts = loss_fn(mobilenet_v2_cifar(SMALL), torch.randn(4, 3, 32, 32), torch.arange(4))
    assert not calls and set(parts) == {"ce"}


def test_fit_with_distill_loss_pulls_student_towards_teacher():
    g = torch.Generator().manual_seed(0)
    from vggc.data import Preprocess, Split

    images = torch.randint(0, 256, (64, 3, 32, 32), generator=g, dtype=torch.uint8)
    split = Split(images, torch.randint(0, 10, (64,), generator=g), tuple(str(i) for i in range(10)), "train")
    teacher = make_tiny_vgg(seed=3)
    pre = Preprocess()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, precision="fp32", seed=0, device="cpu", augment=False)
    student = mobilenet_v2_cifar(SMALL)
    res = fit(student, split, pre, cfg, loss_fn=DistillLoss(teacher, KDConfig(4.0, 1.0)))
    assert res.history[-1]["kd"] < res.history[0]["kd"]
    assert {"kd", "ce", "agree", "loss"} <= set(res.history[0])


# ----------------------------------------------------------------------------- the student

def test_student_macs_params_and_widths():
    m = mobilenet_v2_cifar(1.0)
    macs = count_macs(m, 32)
    assert abs(macs - 90e6) / 90e6 < 0.10, macs
    assert abs(count_params(m) - 2.24e6) < 0.05e6
    assert count_macs(mobilenet_v2_cifar(0.5), 32) < macs / 2.5
    cfg = m.config
    assert cfg.name == "mobilenet_v2_cifar" and cfg.width_mult == 1.0 and cfg.stem == 32
    assert [b["out"] for b in cfg.blocks][:4] == [16, 24, 24, 32] and cfg.last_channel == 1280
    json.dumps(cfg.to_dict())


def test_stride_layout_is_cifar():
    m = mobilenet_v2_cifar(SMALL).eval()
    assert m.features[0][0].stride == (1, 1)
    strides = [blk.stride for blk in m.features[1:18]]
    assert strides == [1, 1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    sides = []
    hooks = [blk.register_forward_hook(lambda mod, i, o: sides.append(o.shape[-1])) for blk in m.features]
    with torch.no_grad():
        out = m(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert out.shape == (1, 10)
    assert sides[0] == 32 and sides[3] == 32 and sides[4] == 16 and sides[7] == 8 and sides[-1] == 4
    # residual blocks: all but the first of each stage
    res = [blk.use_res_connect for blk in m.features[1:18]]
    assert res == [False, False, True, False, True, True, False, True, True, True, False, True, True,
                   False, True, True, False]


def _pruned_config() -> MobileNetV2Config:
    """Non-uniform widths as a channel pruner leaves them (residual chains kept consistent)."""
    cfg = mobilenet_v2_config(SMALL)
    for i, b in enumerate(cfg.blocks):
        if b["expand"]:
            b["hidden"] = max(8, b["hidden"] - 8 - 4 * (i % 3))
    cfg.last_channel = 1000
    cfg.width_mult = None
    return cfg


def test_rebuild_from_state_dict_identical_in_fresh_process(tmp_path):
    torch.manual_seed(0)
    models = {"uniform": mobilenet_v2_cifar(SMALL, num_classes=7), "pruned": build_mobilenet_v2(_pruned_config())}
    x = torch.randn(3, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    expected = {}
    for name, m in models.items():
        m.eval()
        for bn in (mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
        torch.save(m.state_dict(), tmp_path / f"{name}.pt")
        with torch.no_grad():
            expected[name] = m(x)
        back = mobilenet_config_from_state_dict(m.state_dict())
        assert back.blocks == m.config.blocks and back.last_channel == m.config.last_channel
    assert mobilenet_config_from_state_dict(models["uniform"].state_dict()).width_mult == SMALL
    assert mobilenet_config_from_state_dict(models["pruned"].state_dict()).width_mult is None
    code = ("import sys, torch; from vggc.models import load_weights; d = sys.argv[1]; "
            "x = torch.load(d + '/x.pt', weights_only=True)\n"
            "for n in ('uniform', 'pruned'):\n"
            "    lm = load_weights(f'{d}/{n}.pt')\n"
            "    assert lm.name == 'mobilenet_v2_cifar', lm.name\n"
            "    with torch.no_grad(): torch.save(lm.model(x), f'{d}/{n}.out.pt')\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=ROOT, timeout=120,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    for name in models:
        got = torch.load(tmp_path / f"{name}.out.pt", weights_only=True)
        assert torch.equal(got, expected[name]), name


def test_detection_keeps_vgg_and_reads_torchvision_layout(tmp_path):
    _, arch, cfg = model_from_state_dict(make_tiny_vgg().state_dict())
    assert arch.family == "vgg"
    tv = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5)
    model, arch, cfg = model_from_state_dict(tv.state_dict())  # same keys; rebuilt with CIFAR strides
    assert arch.family == "mobilenet_v2" and cfg.width_mult == 0.5
    sd = dict(tv.state_dict())
    sd["features.5.conv.2.weight"] = sd["features.5.conv.2.weight"][:8]
    with pytest.raises(ModelFormatError):
        model_from_state_dict(sd)


def test_info_json_recognises_student(tmp_path):
    m = mobilenet_v2_cifar(SMALL)
    path = tmp_path / "student.pt"
    torch.save(m.state_dict(), path)
    res = CliRunner().invoke(main, ["info", str(path), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["arch"] == "mobilenet_v2_cifar"
    assert doc["macs"] == count_macs(m, 32) and doc["params"] == count_params(m)
    assert doc["config"]["width_mult"] == SMALL and len(doc["config"]["blocks"]) == 17
    text = CliRunner().invoke(main, ["info", str(path)])
    assert text.exit_code == 0 and "mobilenet_v2_cifar" in text.output


# ----------------------------------------------------------------------------- distill end to end

@pytest.fixture
def kd_setup(tmp_path):
    """A tiny teacher with a sidecar JSON (odd normalisation) and tiny data."""
    data = make_imagefolder(tmp_path / "data", per_class=6)
    teacher = tmp_path / "teacher.pt"
    torch.save(make_tiny_vgg(seed=2).state_dict(), teacher)
    side = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "input_size": 32}
    (tmp_path / "teacher.json").write_text(json.dumps(side))
    return teacher, data, side


FAST = ["--width-mult", str(SMALL), "--epochs", "2", "--batch-size", "20", "--device", "cpu",
        "--precision", "fp32", "--threads", "1"]


def test_distill_cli_writes_student_and_manifest(kd_setup, tmp_path):
    teacher, data, side = kd_setup
    out = tmp_path / "student.pt"
    res = CliRunner().invoke(main, ["distill", str(teacher), "--data", str(data), "--out", str(out),
                                    "--temperature", "3", "--alpha", "0.8", "--eval-limit", "40", *FAST])
    assert res.exit_code == 0, res.output
    assert "teacher top-1" in res.output
    lm = load_weights(out)
    assert lm.name == "mobilenet_v2_cifar" and lm.config.width_mult == SMALL
    doc = json.loads((tmp_path / "student.pt.json").read_text())
    assert doc["inputs"]["teacher"]["sha256"] == sha256_file(teacher)
    assert doc["settings"]["distill"]["temperature"] == 3.0 and doc["settings"]["distill"]["alpha"] == 0.8
    assert doc["settings"]["train"]["epochs"] == 2 and doc["settings"]["train"]["seed"] == 0
    m = doc["metrics"]
    assert m["n"] == 40 and 0 <= m["top1"] <= 1 and 0 <= m["teacher_top1"] <= 1 and 0 <= m["agreement"] <= 1
    hist = m["train"]["history"]
    assert len(hist) == 2 and {"kd", "ce", "agree", "loss"} <= set(hist[0])
    assert doc["preprocess"] == {**side}  # the teacher's normalisation, from its sidecar
    assert doc["params"] == count_params(lm.model) and doc["macs"] == count_macs(lm.model, 32)
    assert doc["teacher"]["arch"].startswith("vgg") and doc["arch"] == "mobilenet_v2_cifar"
    assert not (tmp_path / "student.pt.ckpt").exists() and not (tmp_path / "student.pt.ckpt.json").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_distill_bad_input_is_one_line_and_writes_nothing(kd_setup, tmp_path):
    teacher, data, _ = kd_setup
    out = tmp_path / "s.pt"
    res = CliRunner().invoke(main, ["distill", str(teacher), "--data", str(data), "--out", str(out),
                                    "--alpha", "1.5", *FAST])
    assert res.exit_code == 2 and "error: --alpha must be between 0 and 1" in res.output
    t3 = tmp_path / "t3.pt"
    torch.save(make_tiny_vgg(num_classes=3).state_dict(), t3)
    res = CliRunner().invoke(main, ["distill", str(t3), "--data", str(data), "--out", str(out), *FAST])
    assert res.exit_code == 2 and "predicts 3 classes but the data has 10" in res.output
    res = CliRunner().invoke(main, ["distill", str(teacher), "--data", str(data), "--out", str(out), "--resume",
                                    *FAST])
    assert res.exit_code == 2 and "no checkpoint" in res.output
    assert not out.exists() and not list(tmp_path.glob("s.pt*"))


def test_resume_matches_uninterrupted_run(kd_setup, tmp_path):
    teacher, data, _ = kd_setup
    cfg = TrainConfig(epochs=2, batch_size=20, lr=0.05, precision="fp32", seed=1, device="cpu")
    kd = KDConfig(4.0, 0.9)
    full = tmp_path / "full.pt"
    distill(teacher, data, full, cfg, kd, width_mult=SMALL, do_eval=False)

    part = tmp_path / "part.pt"

    def stop(rec):
        if rec["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(teacher, data, part, cfg, kd, width_mult=SMALL, do_eval=False, on_epoch=stop)
    assert (tmp_path / "part.pt.ckpt").is_file() and not part.exists()
    with pytest.raises(InputError, match="different settings"):
        distill(teacher, data, part, cfg, KDConfig(2.0, 0.9), width_mult=SMALL, do_eval=False, resume=True)
    with pytest.raises(InputError, match="different student"):
        distill(teacher, data, part, cfg, kd, width_mult=0.5, do_eval=False, resume=True)
    metrics = distill(teacher, data, part, cfg, kd, width_mult=SMALL, do_eval=False, resume=True)
    assert metrics["train"]["resumed_from"] == 1 and len(metrics["train"]["history"]) == 2
    from vggc.pipeline.build import distill_history  # what a time budget's account counts as an earlier run's

    assert [h["epoch"] for h in distill_history(metrics, restored=True)] == [1]
    assert [h["epoch"] for h in distill_history(metrics)] == [1, 2]
    a, b = torch.load(full, weights_only=True), torch.load(part, weights_only=True)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_distributed_session_is_a_noop_in_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed_session("cpu") as (rank, world, dev):
        assert (rank, world, dev) == (0, 1, "cpu")
    assert not torch.distributed.is_initialized()


def _torchrun() -> str | None:
    cand = Path(sys.executable).with_name("torchrun")
    return str(cand) if cand.is_file() else shutil.which("torchrun")


def test_ddp_two_processes(kd_setup, tmp_path):
    torchrun = _torchrun()
    if torchrun is None:
        pytest.skip("torchrun not found")
    teacher, data, _ = kd_setup
    out = tmp_path / "ddp.pt"
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "vggc.cli", "distill", str(teacher),
           "--data", str(data), "--out", str(out), "--eval-limit", "20", *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("torchrun distill did not finish within 120 s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "distributed: 2 processes (gloo)" in proc.stderr
    assert proc.stdout.count("saved ") == 1  # only rank 0 reports and writes
    doc = json.loads((tmp_path / "ddp.pt.json").read_text())
    m = doc["metrics"]
    assert m["world_size"] == 2 and m["n"] == 20
    assert m["train_images"] == 60 and len(m["train"]["history"]) == 2
    assert load_weights(out).name == "mobilenet_v2_cifar"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ddp")) == ["ddp.pt", "ddp.pt.json"]


def test_resume_refuses_an_unreadable_or_missing_settings_file(kd_setup, tmp_path):
    """The checkpoint's settings file is what --resume checks; when it cannot be read (or is gone)
    the resume is refused with one line, never continued without the check."""
    from vggc.errors import StaleCheckpointError

    teacher, data, _ = kd_setup
    cfg = TrainConfig(epochs=2, batch_size=20, lr=0.05, precision="fp32", seed=1, device="cpu")
    kd = KDConfig(4.0, 0.9)
    part = tmp_path / "part.pt"

    def stop(rec):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(teacher, data, part, cfg, kd, width_mult=SMALL, do_eval=False, on_epoch=stop)
    settings = tmp_path / "part.pt.ckpt.json"
    assert settings.is_file() and (tmp_path / "part.pt.ckpt").is_file()
    settings.write_text('{"kd": {"temperature": 4.0,')  # truncated
    with pytest.raises(StaleCheckpointError, match=r"part.pt.ckpt.json: unreadable settings file .*rerun without "
                                                   r"--resume") as info:
        distill(teacher, data, part, cfg, kd, width_mult=SMALL, do_eval=False, resume=True)
    assert "\n" not in str(info.value)
    settings.unlink()
    with pytest.raises(StaleCheckpointError, match=r"part.pt.ckpt.json \(the settings of part.pt.ckpt\) is missing"):
        distill(teacher, data, part, cfg, kd, width_mult=SMALL, do_eval=False, resume=True)
    assert not part.exists()
