"""scripts/train_speed.py --profile: where a KD training step's time goes, by op group."""

from __future__ import annotations

import pytest
import torch
from conftest import load_script


@pytest.mark.parametrize("name, group", [
    ("aten::convolution_backward", "convolution backward"),
    ("aten::mkldnn_convolution", "convolution forward"),
    ("aten::native_batch_norm_backward", "batch norm backward"),
    ("aten::native_batch_norm", "batch norm forward"),
    ("aten::hardtanh_backward", "activation backward"),
    ("aten::clamp", "activation forward"),
    ("aten::hardtanh_", "activation forward"),
    ("aten::copy_", "copies and casts"),
    ("aten::addmm", "linear"),
    ("aten::max_pool2d_with_indices", "other"),
])
def test_op_group_names_the_kind_of_work(name, group):
    assert load_script("train_speed").op_group(name) == group


def test_profile_fit_shares_cover_the_recorded_ops_of_a_real_kd_epoch():
    from vggc.data import Preprocess, Split
    from vggc.models import mobilenet_v2_cifar

    ts = load_script("train_speed")
    torch.manual_seed(0)
    student, teacher = mobilenet_v2_cifar(0.25, 10), mobilenet_v2_cifar(0.25, 10).eval()
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (128,), generator=g), tuple(str(i) for i in range(10)))
    prof = ts.profile_fit(student, split, Preprocess(), teacher)
    assert prof["images_per_s_profiled"] > 0 and prof["precision"] in ("bf16", "fp32")
    assert sum(prof["share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert {"convolution forward", "convolution backward", "batch norm backward"} <= set(prof["share"])
    assert list(prof["share"].values()) == sorted(prof["share"].values(), reverse=True)
