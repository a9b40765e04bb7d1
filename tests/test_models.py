"""Model loading: any VGG16 state_dict layout rebuilds exactly; bad files give one-line errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import make_tiny_vgg

from vggc.errors import ModelFormatError
from vggc.models import count_macs, count_params, load_weights, model_from_state_dict, unwrap_state_dict
from vggc.models.vgg import VGG16_WIDTHS, VGGConfig, build_vgg, vgg_config_from_state_dict


def _same_outputs(a, b, size=32):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=1e-5)


def test_reference_model_stats(ref_weights):
    lm = load_weights(ref_weights)
    assert lm.name == "vgg16_bn"
    assert abs(count_params(lm.model) - 15.25e6) < 0.1e6
    assert abs(count_macs(lm.model, 32) - 314e6) / 314e6 < 0.02
    assert lm.config.classifier == [512, 512, 512, 10]
    assert lm.sidecar["input_size"] == 32


@pytest.mark.parametrize("bn", [True, False])
def test_torchvision_vgg16_layout_roundtrip(bn):
    ctor = torchvision.models.vgg16_bn if bn else torchvision.models.vgg16
    tv = ctor(num_classes=10).eval()
    model, _, cfg = model_from_state_dict(tv.state_dict())
    assert cfg.batch_norm is bn and cfg.classifier == [25088, 4096, 4096, 10] and cfg.pool_size == 7
    assert cfg.widths == list(VGG16_WIDTHS)
    assert _same_outputs(model, tv, 32)


def test_pruned_nonuniform_widths_rebuild_from_shapes():
    widths = [40, 48, "M", 96, 80, "M", 128, 136, 120, "M", 256, 264, 200, "M", 256, 192, 128, "M"]
    cfg = VGGConfig(widths=widths, classifier=[128, 512, 512, 10])
    src = build_vgg(cfg).eval()
    back = vgg_config_from_state_dict(src.state_dict())
    assert back.widths == widths and back.classifier == [128, 512, 512, 10]
    model, _, _ = model_from_state_dict(src.state_dict())
    assert _same_outputs(model, src)


def test_single_linear_head_and_wrappers():
    cfg = VGGConfig(classifier=[512, 10], classifier_indices=[0])
    src = build_vgg(cfg).eval()
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    for wrapped in ({"state_dict": sd}, {"model": sd, "epoch": 3}, {"model_state_dict": sd}, sd):
        model, _, c = model_from_state_dict(unwrap_state_dict(wrapped))
        assert c.classifier == [512, 10]
        assert _same_outputs(model, src)


def test_resnet_state_dict_is_rejected_with_description():
    sd = torchvision.models.resnet18(num_classes=10).state_dict()
    with pytest.raises(ModelFormatError, match="looks like a ResNet"):
        model_from_state_dict(sd)


def test_bad_files(tmp_path, tiny_vgg):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="empty"):
        load_weights(empty)

    good = tmp_path / "good.pt"
    torch.save(tiny_vgg.state_dict(), good)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFormatError, match="truncated or corrupt"):
        load_weights(trunc)

    pickled = tmp_path / "module.pt"
    torch.save(tiny_vgg, pickled)
    with pytest.raises(ModelFormatError, match=r"pickled nn.Module.*model.state_dict\(\)"):
        load_weights(pickled)

    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(ModelFormatError):
        load_weights(text)

    with pytest.raises(ModelFormatError, match="no tensors"):
        torch.save({"epoch": 1}, tmp_path / "x.pt")
        load_weights(tmp_path / "x.pt")


def test_shape_mismatch_is_reported():
    sd = make_tiny_vgg().state_dict()
    sd["features.3.weight"] = torch.zeros(16, 9, 3, 3)  # takes 9 channels, previous gives 8
    with pytest.raises(ModelFormatError, match="takes 9 channels"):
        model_from_state_dict(sd)


def test_macs_scale_with_input_size():
    m = make_tiny_vgg()
    m32, m64 = count_macs(m, 32), count_macs(m, 64)
    conv_share = m64 - m32  # linear MACs do not change (pool to 1x1), convs scale 4x
    assert conv_share > 0 and abs((m64 - m32) - 3 * (m32 - 32 * 32 - 32 * 32 - 32 * 10)) < 10


def test_manifest_preprocess_wins_over_defaults(tmp_path):
    """A file written by vggc (train/prune/distill) carries its normalisation in <file>.json;
    every loader (export, quantize, eval) must use it, not CIFAR defaults."""
    import json

    from vggc.data import resolve_preprocess

    torch.save(make_tiny_vgg().state_dict(), tmp_path / "m.pt")
    (tmp_path / "m.pt.json").write_text(json.dumps(
        {"kind": "state_dict", "preprocess": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "input_size": 32}}))
    pre = resolve_preprocess(load_weights(tmp_path / "m.pt").sidecar)
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.25, 0.25, 0.25)


# ----------------------------------------------------------------------------- MACs vs PyTorch's counter

def _flop_counter_macs(model, size=32):
    """MACs as ``torch.utils.flop_counter.FlopCounterMode`` counts them: its FLOPs / 2.

    It has formulas only for convolutions and matrix products (``2 x`` their multiply-accumulates,
    bias adds not counted); BatchNorm, ReLU, pooling, dropout and residual adds are counted by
    neither it nor :func:`count_macs`. Returns ``(macs, the aten ops it counted)``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, 3, size, size))
    ops = {str(op).removeprefix("aten.") for op in counter.get_flop_counts()["Global"]}
    total = counter.get_total_flops()
    assert total % 2 == 0
    return total // 2, ops


def _vgg(**kw):
    torch.manual_seed(0)
    return build_vgg(VGGConfig(**kw)).eval()


def _mbv2(width_mult):
    from vggc.models.mobilenet import mobilenet_v2_cifar

    torch.manual_seed(0)
    return mobilenet_v2_cifar(width_mult).eval()


ARCHS = {
    "vgg16_bn_cifar_head": lambda: _vgg(),
    "vgg16_cifar_head_no_bn": lambda: _vgg(batch_norm=False),
    "vgg16_bn_4096_head": lambda: _vgg(classifier=[25088, 4096, 4096, 10], pool_size=7),
    "vgg16_4096_head_no_bn": lambda: _vgg(batch_norm=False, classifier=[25088, 4096, 4096, 10], pool_size=7),
    "vgg16_single_linear_head": lambda: _vgg(classifier=[512, 10], classifier_indices=[0]),
    "vgg_pruned_nonuniform": lambda: _vgg(widths=[40, 48, "M", 96, 80, "M", 128, 136, 120, "M", 256, 264, 200, "M",
                                                  256, 192, 128, "M"], classifier=[128, 512, 512, 10]),
    "mobilenet_v2_1.0": lambda: _mbv2(1.0),
    "mobilenet_v2_0.5": lambda: _mbv2(0.5),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_macs_match_torch_flop_counter(arch):
    """vggc's MAC count (Conv2d + Linear multiply-accumulates) equals FlopCounterMode's FLOPs / 2
    exactly, for every architecture vggc builds, at 32x32 and (VGG CIFAR head) 64x64."""
    model = ARCHS[arch]()
    macs, ops = _flop_counter_macs(model)
    assert ops <= {"convolution", "addmm", "mm"} and "convolution" in ops, ops
    assert count_macs(model, 32) == macs
    if arch == "vgg16_bn_cifar_head":
        assert count_macs(model, 64) == _flop_counter_macs(model, 64)[0]


@pytest.mark.parametrize("arch", ["vgg16_bn_cifar_head", "mobilenet_v2_0.5"])
def test_pruned_model_macs_match_torch_flop_counter(arch):
    """A model pruned by vggc (non-uniform widths, depthwise groups for MobileNetV2): the plan's
    analytic MACs, count_macs and FlopCounterMode / 2 all agree."""
    from vggc.compress.prune import PruneSpec, prune_model

    model = ARCHS[arch]()
    plan, _ = prune_model(model, PruneSpec(strategy="global", target_macs=0.5))
    macs, _ = _flop_counter_macs(model)
    assert plan.macs == count_macs(model) == macs and macs <= 0.5 * plan.base_macs


@pytest.mark.parametrize("bad,what", [(float("nan"), "1 NaN value"), (float("inf"), "1 Inf value")])
def test_non_finite_weights_are_refused_naming_the_first_bad_tensor(tmp_path, tiny_vgg, bad, what):
    sd = tiny_vgg.state_dict()
    first, later = "features.0.weight", "classifier.0.bias"
    sd[later][0] = float("nan")
    sd[first].view(-1)[5] = bad
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(ModelFormatError) as info:
        load_weights(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: tensor {first} holds {what} (of {sd[first].numel()})") and "\n" not in msg
    assert later not in msg
