"""vggc prune: filters really removed (and equal to masking them), MAC targets with rounding,
strategies, sensitivity scan, iterative steps + resume, reload from shapes alone, one-line errors."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from conftest import make_imagefolder, make_tiny_vgg
from torch import nn

from vggc.compress.prune import MacModel, PruneSpec, PruningGraph, make_plan, prune_file, prune_model, step_plan
from vggc.compress.sensitivity import SensitivityTable, read_scan, scan_sensitivity, write_scan
from vggc.data import Preprocess, Split
from vggc.errors import InputError
from vggc.models import VGGConfig, build_vgg, count_macs, model_from_state_dict
from vggc.train import TrainConfig

WIDE = dict(widths=(16, "M", 32, "M", 32, 32, "M", 64, 64, "M", 64, 64, "M"), classifier=(64, 32, 32))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine two threads
    run several times slower than one (the reference test too)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def wide_vgg(seed=0):
    return make_tiny_vgg(seed=seed, **WIDE)


def convs(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def toy_split(n=40, seed=0, name="train"):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return Split(images, labels, tuple(f"c{i}" for i in range(10)), name)


def run_cli(*args):
    from vggc.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(res, code, pattern):
    assert res.exit_code == code, res.output
    errs = [ln for ln in res.output.strip().splitlines() if ln.startswith("error:")]
    assert "Traceback" not in res.output and len(errs) == 1 and pattern in errs[0], res.output


# ----------------------------------------------------------------------------- surgery


def test_uniform_prune_really_removes_filters_and_equals_masking_them():
    orig = wide_vgg()
    model = copy.deepcopy(orig)
    plan, removed = prune_model(model, PruneSpec(amount=0.5, round_to=4))
    oc, pc = convs(orig), convs(model)
    names = list(oc)
    kept_prev = list(range(3))
    for name in names:
        w0 = oc[name].weight
        kept = sorted(set(range(w0.shape[0])) - set(removed[name]))
        assert len(kept) == w0.shape[0] // 2 == plan.keep[name] == pc[name].out_channels
        # kept filters are the originals at the kept indices (input channels follow the previous layer)
        assert torch.equal(pc[name].weight, w0[kept][:, kept_prev])
        assert torch.equal(pc[name].bias, oc[name].bias[kept])
        # the removed filters are the ones with the smallest L1 norm
        l1 = w0.abs().flatten(1).sum(1)
        assert l1[removed[name]].max() <= l1[kept].min()
        bn_index = int(name.split(".")[1]) + 1  # features.<i> conv -> features.<i+1> BatchNorm
        bn0, bn1 = orig.features[bn_index], model.features[bn_index]
        for attr in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(bn1, attr), getattr(bn0, attr)[kept]), (name, attr)
        assert bn1.num_features == len(kept)
        kept_prev = kept
    assert model.classifier[0].in_features == pc[names[-1]].out_channels
    assert torch.equal(model.classifier[0].weight, orig.classifier[0].weight[:, kept_prev])

    # the pruned model computes exactly what the original computes with those channels zeroed
    hooks = []
    for name in names:
        idx = int(name.split(".")[1])
        drop = removed[name]

        def zero(_m, _i, out, drop=drop):
            out = out.clone()
            out[:, drop] = 0
            return out
        hooks.append(orig.features[idx + 1].register_forward_hook(zero))  # BN output -> ReLU(0) = 0
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        masked, pruned = orig(x), model(x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(pruned, masked, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("strategy", ["uniform", "global"])
def test_target_macs_met_with_rounded_widths_and_exact_analytic_count(strategy):
    model = wide_vgg()
    base = count_macs(model)
    plan, _ = prune_model(model, PruneSpec(strategy=strategy, target_macs=0.5, round_to=8))
    real = count_macs(model)
    assert real == plan.macs and real <= 0.5 * base
    assert real > 0.3 * base  # the search does not overshoot wildly
    for name, conv in convs(model).items():
        assert conv.out_channels % 8 == 0, (name, conv.out_channels)
    # the reloaded model is the same architecture, read from shapes alone
    rebuilt, _, cfg = model_from_state_dict(model.state_dict())
    assert cfg.conv_widths == [c.out_channels for c in convs(model).values()]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_pool_size_2_head_drops_all_features_of_a_removed_channel():
    torch.manual_seed(0)
    model = build_vgg(VGGConfig(widths=[16, "M", 32, "M", 32, "M", 32, "M"], classifier=[32 * 4, 32, 32, 10],
                                pool_size=2)).eval()
    graph = PruningGraph(model)
    macs = MacModel(graph)
    keep = {n: w // 2 for n, w in graph.widths().items()}
    predicted = macs.macs(keep)
    graph.apply(keep)
    assert model.classifier[0].in_features == 16 * 4
    assert count_macs(model) == predicted
    _, _, cfg = model_from_state_dict(model.state_dict())
    assert cfg.pool_size == 2 and cfg.classifier[0] == 64


def test_mobilenet_v2_student_prunes_with_coupled_residual_channels():
    from vggc.models.mobilenet import mobilenet_v2_cifar

    torch.manual_seed(0)
    model = mobilenet_v2_cifar(0.5).eval()
    graph = PruningGraph(model)
    assert graph.names[0] == "features.0.0"  # groups are named after their earliest conv
    plan, _ = prune_model(model, PruneSpec(strategy="global", target_macs=0.5))
    assert count_macs(model) == plan.macs <= 0.5 * plan.base_macs
    rebuilt, arch, _ = model_from_state_dict(model.state_dict())  # residual widths stay consistent
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
    assert arch.family != "vgg"


def test_global_ranks_across_layers_and_respects_max_ratio():
    model = wide_vgg()
    with torch.no_grad():  # 48 of features.15's 64 filters become tiny relative to their layer
        model.features[15].weight[:48] *= 1e-3
    uni = make_plan(model, PruneSpec(strategy="uniform", amount=0.2, round_to=8))
    glo = make_plan(model, PruneSpec(strategy="global", amount=0.2, round_to=8))
    assert uni.keep["features.15"] == 48  # 64 * 0.8 = 51.2 -> nearest multiple of 8
    assert glo.keep["features.15"] == 16  # the 48 weak filters go first
    assert glo.keep != uni.keep and glo.removed_fraction >= 0.2
    capped = make_plan(model, PruneSpec(strategy="global", amount=0.2, round_to=8, max_ratio=0.5))
    assert capped.keep["features.15"] == 32
    assert all(k >= w // 2 for k, w in zip(capped.keep.values(), capped.widths_before.values(), strict=True))


def test_iterative_widths_move_monotonically_to_the_final_plan():
    before = {"a": 64, "b": 128}
    final = {"a": 32, "b": 40}
    spec = PruneSpec(amount=0.5, round_to=8, steps=3)
    plans = [step_plan(before, final, k, 3, spec) for k in (1, 2, 3)]
    assert plans[-1] == final
    for p_prev, p in zip([before, *plans][:-1], plans, strict=True):
        assert all(p[n] <= p_prev[n] and p[n] % 8 == 0 for n in p)


# ----------------------------------------------------------------------------- sensitivity


def test_sensitivity_scan_is_exact_restores_the_model_and_writes_files(tmp_path):
    model = make_tiny_vgg(seed=3)
    state = copy.deepcopy(model.state_dict())
    split, pre = toy_split(n=30), Preprocess()
    fractions = (0.25, 0.5)
    table = scan_sensitivity(model, split, pre, fractions, batch_size=16)
    names = list(convs(model))
    assert table.layers == names and len(table.top1) == len(names)
    assert all(len(r) == len(fractions) for r in table.top1)
    # the model is left exactly as it was
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert [c.out_channels for c in convs(model).values()] == table.widths
    # every entry equals pruning a fresh copy by hand
    x = pre(split.images)
    for i, name in [(0, names[0]), (3, names[3]), (len(names) - 1, names[-1])]:
        for j, _ in enumerate(fractions):
            m = copy.deepcopy(model)
            g = PruningGraph(m)
            g.remove(name, torch.argsort(g.l1(name), stable=True)[:table.removed[i][j]].tolist())
            with torch.no_grad():
                acc = (m(x).argmax(1) == split.labels).float().mean().item()
            assert abs(acc - table.top1[i][j]) < 1e-6, (name, fractions[j])
    paths = write_scan(table, tmp_path / "scan")
    lines = paths["csv"].read_text().strip().splitlines()
    assert lines[0] == "layer,width,fraction,removed,top1,drop" and len(lines) == 1 + len(names) * len(fractions)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_scan(tmp_path / "scan") == table
    with pytest.raises(InputError, match="train split"):
        scan_sensitivity(model, toy_split(name="test"), pre, fractions)


def _fingerprint(model):
    """Everything a scan could disturb: module tree (types, reprs with widths/groups), and every
    parameter and buffer (object identity, dtype, shape, bytes, requires_grad)."""
    tree = [(n, type(m).__name__, m.extra_repr()) for n, m in model.named_modules()]
    tensors = [(n, id(t), t.dtype, tuple(t.shape), t.detach().clone(), t.requires_grad)
               for n, t in [*model.named_parameters(), *model.named_buffers()]]
    return tree, tensors, model.training


@pytest.mark.parametrize("arch", ["vgg", "mobilenet_v2"])
def test_sensitivity_scan_leaves_the_model_bit_identical(arch):
    from vggc.models.mobilenet import mobilenet_v2_cifar

    if arch == "vgg":
        model = make_tiny_vgg(seed=5)
    else:
        torch.manual_seed(0)
        model = mobilenet_v2_cifar(0.5).eval()
    tree, tensors, training = _fingerprint(model)
    scan_sensitivity(model, toy_split(n=20), Preprocess(), (0.3, 0.6), batch_size=10)
    tree2, tensors2, training2 = _fingerprint(model)
    assert tree2 == tree and training2 == training
    assert len(tensors2) == len(tensors)
    for (n, i, dt, shape, t, rg), (n2, i2, dt2, shape2, t2, rg2) in zip(tensors, tensors2, strict=True):
        assert (n2, i2, dt2, shape2, rg2) == (n, i, dt, shape, rg), n
        assert torch.equal(t2, t) and t2.view(-1).view(torch.uint8).equal(t.view(-1).view(torch.uint8)), n


def test_sensitivity_strategy_spares_the_sensitive_layer():
    model = wide_vgg()
    widths = PruningGraph(model).widths()
    fr = [0.25, 0.5, 0.75]
    top1 = [[0.2, 0.1, 0.1] if n == "features.4" else [0.9, 0.9, 0.88] for n in widths]
    table = SensitivityTable(layers=list(widths), widths=list(widths.values()), fractions=fr, top1=top1,
                             baseline=0.9, n=100)
    plan = make_plan(model, PruneSpec(strategy="sensitivity", target_macs=0.6, round_to=8), table=table)
    assert plan.keep["features.4"] == 32 and plan.macs_ratio <= 0.6
    assert sum(plan.keep[n] < w for n, w in widths.items()) >= 5
    uni = make_plan(model, PruneSpec(strategy="uniform", target_macs=0.6, round_to=8))
    assert uni.keep["features.4"] < 32
    bad = SensitivityTable(layers=["features.0"], widths=[99], fractions=fr, top1=[[0.9] * 3], baseline=0.9, n=1)
    with pytest.raises(InputError, match="does not match"):
        make_plan(model, PruneSpec(strategy="sensitivity", amount=0.3), table=bad)


# ----------------------------------------------------------------------------- bad input


def test_bad_specs_are_one_line_input_errors():
    for kw, pat in [(dict(amount=0.5, target_macs=0.5), "exactly one"), (dict(), "exactly one"),
                    (dict(amount=1.5), "--amount"), (dict(amount=0.0), "--amount"),
                    (dict(target_macs=1.0), "--target-macs"), (dict(amount=0.5, strategy="random"), "--strategy")]:
        with pytest.raises(InputError, match=pat):
            PruneSpec(**kw)
    with pytest.raises(InputError, match="cannot reach"):
        make_plan(wide_vgg(), PruneSpec(target_macs=0.005))
    with pytest.raises(InputError, match="cannot reach"):
        make_plan(wide_vgg(), PruneSpec(strategy="global", amount=0.95))


def test_cli_bad_input(tmp_path, tiny_data):
    w = tmp_path / "tiny.pt"
    torch.save(make_tiny_vgg().state_dict(), w)
    out = tmp_path / "p.pt"
    one_line_error(run_cli("prune", w, "--data", tiny_data, "--amount", 0.5, "--target-macs", 0.5, "--out", out),
                   2, "exactly one")
    one_line_error(run_cli("prune", w, "--data", tiny_data, "--out", out), 2, "exactly one")
    one_line_error(run_cli("prune", w, "--data", tiny_data, "--amount", 1.2, "--out", out), 2, "--amount")
    one_line_error(run_cli("prune", w, "--data", tiny_data, "--target-macs", 0.001, "--finetune-epochs", 0,
                           "--no-eval", "--out", out), 2, "cannot reach")
    one_line_error(run_cli("prune", w, "--data", tiny_data, "--scan", "--out", out), 2, "directory")
    one_line_error(run_cli("prune", w, "--data", tiny_data, "--amount", 0.5, "--kd-alpha", 1.5, "--out", out),
                   2, "--kd-alpha")
    one_line_error(run_cli("prune", w, "--data", tiny_data, "--amount", 0.5, "--kd-alpha", 0.9,
                           "--kd-temperature", -1, "--out", out), 2, "--kd-temperature")
    one_line_error(run_cli("prune", w, "--data", tiny_data, "--amount", 0.5, "--out", tmp_path / "p.onnx"),
                   2, "--out")
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


# ----------------------------------------------------------------------------- whole runs


def _ft(**kw):
    base = dict(epochs=1, batch_size=16, lr=0.02, precision="fp32", seed=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_iterative_prune_reaches_target_and_resume_matches(tmp_path):
    data = make_imagefolder(tmp_path / "data", per_class=4)
    w = tmp_path / "tiny.pt"
    torch.save(wide_vgg().state_dict(), w)
    spec = PruneSpec(target_macs=0.5, round_to=4, steps=2)
    kw = dict(train_cfg=_ft(), finetune_epochs=4, do_eval=False)

    a = tmp_path / "a.pt"
    m = prune_file(w, data, a, spec, **kw)
    base = m["macs_before"]
    assert m["macs_after"] <= 0.5 * base and len(m["steps"]) == 2
    s1, s2 = m["steps"]
    assert s1["macs"] > s2["macs"] == m["macs_after"] and s1["epochs"] == s2["epochs"] == 2
    assert all(s2["widths"][n] <= s1["widths"][n] for n in s1["widths"])
    assert m["finetune_cpu_seconds"] > 0
    assert not list(tmp_path.glob("a.pt.*ckpt")) and not (tmp_path / "a.pt.state.pt").exists()

    b = tmp_path / "b.pt"
    calls = []

    def stop_in_step_two(rec):
        calls.append(rec)
        if len(calls) == 3:  # step 2, after its first epoch's checkpoint
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prune_file(w, data, b, spec, on_epoch=stop_in_step_two, **kw)
    assert not b.exists() and (tmp_path / "b.pt.state.pt").is_file() and (tmp_path / "b.pt.step2.ckpt").is_file()
    mb = prune_file(w, data, b, spec, resume=True, **kw)
    assert mb["steps"][1]["resumed_from_epoch"] == 1
    # time spent before the kill still counts: totals are summed over all epoch records
    s2b = mb["steps"][1]
    assert len(s2b["history"]) == 2 and all(h["cpu_seconds"] > 0 for h in s2b["history"])
    assert s2b["finetune_seconds"] == pytest.approx(sum(h["seconds"] for h in s2b["history"]), abs=0.02)
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], msg=k)
    with pytest.raises(InputError, match="nothing to resume"):
        prune_file(w, data, tmp_path / "c.pt", spec, resume=True, **kw)


def test_cli_scan_then_sensitivity_prune_reloads_in_fresh_process(tmp_path):
    data = make_imagefolder(tmp_path / "data", per_class=4)
    w = tmp_path / "tiny.pt"
    torch.save(make_tiny_vgg(seed=1).state_dict(), w)
    sidecar = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "input_size": 32}
    (tmp_path / "tiny.json").write_text(json.dumps(sidecar))

    res = run_cli("prune", w, "--data", data, "--scan", "--scan-limit", 30, "--fractions", "0.25,0.5,0.75",
                  "--threads", 1, "--out", tmp_path / "scan")
    assert res.exit_code == 0, res.output
    scan_doc = json.loads((tmp_path / "scan" / "sensitivity.csv.json").read_text())
    assert scan_doc["settings"]["split"] == "train" and scan_doc["metrics"]["n"] == 30
    assert scan_doc["settings"]["preprocess"]["mean"] == [0.5, 0.5, 0.5]

    out = tmp_path / "p.pt"
    res = run_cli("prune", w, "--data", data, "--strategy", "sensitivity", "--sensitivity", tmp_path / "scan",
                  "--target-macs", 0.6, "--round-to", 4, "--finetune-epochs", 1, "--batch-size", 16,
                  "--eval-limit", 20, "--threads", 1, "--out", out)
    assert res.exit_code == 0, res.output
    man = json.loads((tmp_path / "p.pt.json").read_text())
    assert man["preprocess"]["mean"] == [0.5, 0.5, 0.5]  # copied from the source's sidecar
    assert man["settings"]["prune"]["strategy"] == "sensitivity" and man["metrics"]["n"] == 20
    assert man["metrics"]["macs_after"] <= 0.6 * man["metrics"]["macs_before"]
    assert {"top1_source", "top1_before_finetune", "top1", "finetune_cpu_seconds"} <= set(man["metrics"])
    assert man["inputs"]["source"]["sha256"] and "sensitivity" in man["inputs"]

    p = subprocess.run([sys.executable, "-c", "from vggc.cli import main; main()", "info", str(out), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["macs"] == man["macs"] == man["metrics"]["macs_after"]
    assert [r["out"] for r in info["layers"] if r["type"] == "conv"] == list(man["widths"].values())
    assert info["preprocess"]["mean"] == [0.5, 0.5, 0.5]


def test_reference_pruned_to_half_the_macs_loads_and_evaluates(ref_weights, cifar_dir, tmp_path):
    from vggc.models import load_weights

    out = tmp_path / "p50.pt"
    m = prune_file(ref_weights, cifar_dir, out, PruneSpec(target_macs=0.5), finetune_epochs=0, eval_limit=500)
    assert m["macs_after"] <= 0.5 * m["macs_before"] and m["macs_ratio"] > 0.4
    assert m["n"] == 500 and 0.8 < m["top1_source"] and m["top1"] == m["top1_before_finetune"]
    assert m["top1"] > 0.1  # damaged without fine-tune, but not destroyed
    # BatchNorm statistics re-estimated on 500 training images (the default) recover most of it:
    # 78.6 % on 1,000 test images measured, 19.4 % without (docs/prune.md)
    assert m["steps"][0]["bn_recalib_images"] == 500 and m["top1"] > 0.7
    lm = load_weights(out)
    widths = lm.config.conv_widths
    assert all(w % 8 == 0 for w in widths) and max(widths) < 512
    assert count_macs(lm.model) == m["macs_after"]


def test_finetune_can_distil_from_the_unpruned_source(tmp_path, monkeypatch):
    """--kd-alpha: the fine-tune loss is KD from a frozen copy of the *unpruned* source (+ CE);
    recorded in the manifest and in the resume key."""
    import vggc.compress.distill as distill_mod
    from vggc.compress.distill import KDConfig

    data = make_imagefolder(tmp_path / "data", per_class=4)
    w = tmp_path / "tiny.pt"
    torch.save(wide_vgg().state_dict(), w)
    spec = PruneSpec(target_macs=0.5, round_to=4)
    teachers = []

    class Recording(distill_mod.DistillLoss):
        def __init__(self, teacher, *a, **kw):
            teachers.append(teacher)
            super().__init__(teacher, *a, **kw)

    monkeypatch.setattr(distill_mod, "DistillLoss", Recording)
    m = prune_file(w, data, tmp_path / "kd.pt", spec, train_cfg=_ft(), finetune_epochs=1, do_eval=False,
                   kd=KDConfig(temperature=2.0, alpha=0.9))
    assert {"kd", "ce", "agree"} <= set(m["steps"][0]["history"][0])
    (teacher,) = teachers
    assert count_macs(teacher) == m["macs_before"] and not any(p.requires_grad for p in teacher.parameters())
    source = torch.load(w, weights_only=True)
    for k, v in teacher.state_dict().items():  # the teacher stays the source, untouched by the fine-tune
        torch.testing.assert_close(v, source[k], msg=k)
    man = json.loads((tmp_path / "kd.pt.json").read_text())
    assert man["settings"]["distill_from_source"] == {"temperature": 2.0, "alpha": 0.9}

    plain = prune_file(w, data, tmp_path / "ce.pt", spec, train_cfg=_ft(), finetune_epochs=1, do_eval=False)
    assert "kd" not in plain["steps"][0]["history"][0] and len(teachers) == 1
    assert json.loads((tmp_path / "ce.pt.json").read_text())["settings"]["distill_from_source"] is None


def test_resume_refuses_a_checkpoint_from_another_loss(tmp_path):
    """Killed in the first fine-tune epoch-run (only OUT.step1.ckpt exists): resuming with another
    fine-tune loss (here KD switched on) is refused instead of silently mixing the two runs."""
    from vggc.compress.distill import KDConfig
    from vggc.errors import StaleCheckpointError

    data = make_imagefolder(tmp_path / "data", per_class=4)
    w = tmp_path / "tiny.pt"
    torch.save(wide_vgg().state_dict(), w)
    spec, out = PruneSpec(target_macs=0.5, round_to=4), tmp_path / "p.pt"

    def stop(rec):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prune_file(w, data, out, spec, train_cfg=_ft(epochs=2), finetune_epochs=2, do_eval=False, on_epoch=stop)
    assert (tmp_path / "p.pt.step1.ckpt").is_file() and not (tmp_path / "p.pt.state.pt").exists()
    with pytest.raises(StaleCheckpointError, match=r"different settings \(loss\)"):
        prune_file(w, data, out, spec, train_cfg=_ft(epochs=2), finetune_epochs=2, do_eval=False, resume=True,
                   kd=KDConfig(alpha=0.5))
    m = prune_file(w, data, out, spec, train_cfg=_ft(epochs=2), finetune_epochs=2, do_eval=False, resume=True)
    assert m["steps"][0]["resumed_from_epoch"] == 1


# ----------------------------------------------------------------------------- refused before training


def _record_calls(monkeypatch):
    """Record every split read and every fine-tune started (the real functions still run)."""
    import vggc.data
    import vggc.train

    calls = []
    real_load, real_fit = vggc.data.load_split, vggc.train.fit

    def load_split(root, split="test", **kw):
        calls.append(("load_split", split))
        return real_load(root, split, **kw)

    def fit(*a, **kw):
        calls.append(("fit",))
        return real_fit(*a, **kw)

    monkeypatch.setattr(vggc.data, "load_split", load_split)
    monkeypatch.setattr(vggc.train, "fit", fit)
    return calls


@pytest.mark.parametrize("strategy", ["uniform", "global", "sensitivity"])
def test_unreachable_target_is_refused_before_any_image_is_read(tmp_path, monkeypatch, strategy):
    data = make_imagefolder(tmp_path / "data", per_class=2)
    w = tmp_path / "tiny.pt"
    torch.save(wide_vgg().state_dict(), w)
    calls = _record_calls(monkeypatch)
    out = tmp_path / "p.pt"
    with pytest.raises(InputError, match="cannot reach 1% of the baseline MACs"):
        prune_file(w, data, out, PruneSpec(strategy=strategy, target_macs=0.01, round_to=4), train_cfg=_ft(),
                   finetune_epochs=1)
    assert calls == [] and not list(tmp_path.glob("p.pt*")) and not list(tmp_path.glob(".tmp-*"))


def test_plan_whose_real_macs_miss_the_target_is_refused_before_fine_tuning(tmp_path, monkeypatch):
    """If the analytic MAC count ever under-counts, the really pruned model is checked against the
    target before the fine-tune starts (it used to be found only after it)."""
    data = make_imagefolder(tmp_path / "data", per_class=2)
    w = tmp_path / "tiny.pt"
    torch.save(wide_vgg().state_dict(), w)
    calls = _record_calls(monkeypatch)
    real_macs = MacModel.macs

    def undercount(self, keep=None):
        n = real_macs(self, keep)
        return n if keep is None else int(0.8 * n)

    monkeypatch.setattr(MacModel, "macs", undercount)
    out = tmp_path / "p.pt"
    with pytest.raises(InputError, match=r"when really pruned .* refusing it before any fine-tune"):
        prune_file(w, data, out, PruneSpec(target_macs=0.5, round_to=4), train_cfg=_ft(), finetune_epochs=1)
    assert ("fit",) not in calls and calls == []
    assert not list(tmp_path.glob("p.pt*"))


def test_cli_unreachable_target_with_fine_tune_exits_2_and_writes_nothing(tmp_path, tiny_data, monkeypatch):
    w = tmp_path / "tiny.pt"
    torch.save(make_tiny_vgg().state_dict(), w)
    calls = _record_calls(monkeypatch)
    out = tmp_path / "p.pt"
    one_line_error(run_cli("prune", w, "--data", tiny_data, "--target-macs", 0.001, "--finetune-epochs", 3,
                           "--out", out), 2, "cannot reach")
    assert calls == [] and not list(tmp_path.glob("p.pt*"))


# ----------------------------------------------------------------------------- resume settings


def _killed_run(tmp_path, steps=1):
    """A prune run killed during its first fine-tune epoch; returns (weights, data, out, spec, kw)."""
    data = make_imagefolder(tmp_path / "data", per_class=4)
    w = tmp_path / "tiny.pt"
    torch.save(wide_vgg().state_dict(), w)
    spec, out = PruneSpec(target_macs=0.5, round_to=4, steps=steps), tmp_path / "p.pt"
    kw = dict(train_cfg=_ft(epochs=2), finetune_epochs=2 * steps, do_eval=False)
    seen = []

    def stop(rec):
        seen.append(rec)
        if len(seen) == steps * 2 - 1:  # the last step's first epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prune_file(w, data, out, spec, on_epoch=stop, **kw)
    return w, data, out, spec, kw


def test_resume_refuses_unreadable_or_missing_settings(tmp_path):
    from vggc.compress.prune import settings_file
    from vggc.errors import StaleCheckpointError

    w, data, out, spec, kw = _killed_run(tmp_path)
    settings = settings_file(out)
    assert settings.name == "p.pt.settings.json" and (tmp_path / "p.pt.step1.ckpt").is_file()
    doc = json.loads(settings.read_text())
    assert doc["spec"]["target_macs"] == 0.5 and doc["epochs"] == [2] and doc["bn_recalib"]["images"] == 500

    good = settings.read_text()
    settings.write_text(good[: len(good) // 2])  # truncated: unreadable
    with pytest.raises(StaleCheckpointError, match="p.pt.settings.json"):
        prune_file(w, data, out, spec, resume=True, **kw)
    settings.unlink()
    with pytest.raises(StaleCheckpointError, match="is missing"):
        prune_file(w, data, out, spec, resume=True, **kw)
    settings.write_text(good)
    with pytest.raises(StaleCheckpointError, match=r"different settings \(bn_recalib\)"):
        prune_file(w, data, out, spec, resume=True, bn_recalib=100, **kw)
    m = prune_file(w, data, out, spec, resume=True, **kw)
    assert m["steps"][0]["resumed_from_epoch"] == 1
    assert not settings.exists() and not list(tmp_path.glob("p.pt.*ckpt"))


def test_resume_refuses_an_unreadable_state_file_in_one_line(tmp_path):
    from vggc.errors import StaleCheckpointError

    w, data, out, spec, kw = _killed_run(tmp_path, steps=2)
    state = tmp_path / "p.pt.state.pt"
    assert state.is_file() and (tmp_path / "p.pt.step2.ckpt").is_file()
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(StaleCheckpointError, match="^--resume: .*p.pt.state.pt.*rerun without --resume$"):
        prune_file(w, data, out, spec, resume=True, **kw)
    torch.save({"key": "x"}, state)
    with pytest.raises(StaleCheckpointError, match="not a vggc prune state"):
        prune_file(w, data, out, spec, resume=True, **kw)
    res = run_cli("prune", w, "--data", data, "--target-macs", 0.5, "--round-to", 4, "--steps", 2,
                  "--finetune-epochs", 4, "--batch-size", 16, "--no-eval", "--resume", "--out", out)
    one_line_error(res, 2, "--resume")


# ----------------------------------------------------------------------------- BatchNorm re-estimation


def test_recalibrate_bn_re_estimates_statistics_without_touching_weights():
    from vggc.compress.bn_recalib import recalibrate_bn

    model = make_tiny_vgg(seed=2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.3
    model.classifier[2] = nn.Dropout(0.9)  # would change nothing upstream, but must be off anyway
    weights = {k: v.clone() for k, v in model.named_parameters()}
    split, pre = toy_split(n=40), Preprocess()
    used = recalibrate_bn(model, split, pre, images=40, batch=20)
    assert used == 40 and not model.training and all(not m.training for m in model.modules())
    for k, v in model.named_parameters():
        assert torch.equal(v, weights[k]), k
    bn0 = model.features[1]
    with torch.no_grad():
        act = model.features[0](pre(split.images))
    # two equal batches, cumulative average: the mean over all 40 images; variance: the mean of
    # the two batches' unbiased variances
    torch.testing.assert_close(bn0.running_mean, act.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    halves = [a.transpose(0, 1).flatten(1).var(1, unbiased=True) for a in act.split(20)]
    torch.testing.assert_close(bn0.running_var, (halves[0] + halves[1]) / 2, atol=1e-5, rtol=1e-4)
    assert bn0.momentum == 0.3 and int(bn0.num_batches_tracked) == 2
    with pytest.raises(InputError, match="not the test split"):
        recalibrate_bn(model, toy_split(name="test"), pre)


def test_bn_recalib_is_recorded_and_zero_turns_it_off(tmp_path):
    data = make_imagefolder(tmp_path / "data", per_class=3)
    w = tmp_path / "tiny.pt"
    torch.save(wide_vgg().state_dict(), w)
    spec = PruneSpec(target_macs=0.5, round_to=4)
    on = prune_file(w, data, tmp_path / "on.pt", spec, eval_limit=20, bn_recalib=20)
    off = prune_file(w, data, tmp_path / "off.pt", spec, eval_limit=20, bn_recalib=0)
    assert on["steps"][0]["bn_recalib_images"] == 20 and "bn_recalib_images" not in off["steps"][0]
    assert on["top1"] == on["top1_before_finetune"]
    man_on = json.loads((tmp_path / "on.pt.json").read_text())
    man_off = json.loads((tmp_path / "off.pt.json").read_text())
    assert man_on["settings"]["bn_recalib"]["images"] == 20 and man_off["settings"]["bn_recalib"] == 0
    a, b = torch.load(tmp_path / "on.pt", weights_only=True), torch.load(tmp_path / "off.pt", weights_only=True)
    assert torch.equal(a["features.0.weight"], b["features.0.weight"])  # same filters kept, weights untouched
    assert not torch.equal(a["features.1.running_mean"], b["features.1.running_mean"])


def test_a_given_reference_replaces_the_source_evaluation(tmp_path):
    """``reference=`` (the pipeline's source_eval record): ``top1_source`` is taken from it and the
    source is not evaluated again; a record of other images is refused."""
    from vggc import work
    from vggc.data import limit_split, load_split
    from vggc.reference import evaluate_source, reference_doc

    data = make_imagefolder(tmp_path / "data", per_class=4)
    w = tmp_path / "tiny.pt"
    torch.save(wide_vgg().state_dict(), w)
    spec = PruneSpec(target_macs=0.5, round_to=4)
    before = work.snapshot()
    plain = prune_file(w, data, tmp_path / "a.pt", spec, eval_limit=20, bn_recalib=0)
    assert work.since(before)["fp32_source_evals"] == 1
    test = limit_split(load_split(data, "test"), 20, 0)
    model = model_from_state_dict(torch.load(w, weights_only=True))[0]
    ref = reference_doc(evaluate_source(model, test, Preprocess()), test, eval_limit=20, seed=0)
    ref["top1"] = 0.123456  # what the record says is what is used (nothing re-evaluated)
    before = work.snapshot()
    given = prune_file(w, data, tmp_path / "b.pt", spec, eval_limit=20, bn_recalib=0, reference=ref)
    assert work.since(before)["fp32_source_evals"] == 0
    assert given["top1_source"] == 0.123456 and given["top1"] == plain["top1"]
    with pytest.raises(InputError, match="other evaluation images|on 20 images"):
        prune_file(w, data, tmp_path / "c.pt", spec, eval_limit=10, bn_recalib=0, reference=ref)
    assert not (tmp_path / "c.pt").exists()
