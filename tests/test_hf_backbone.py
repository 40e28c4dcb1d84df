"""A mimkit encoder as a transformers backbone: every method's export loads with ``AutoBackbone`` and its feature
maps equal mimkit's block (or Swin stage) outputs; UperNet and DPT train on it."""
import json

import pytest
import torch
import transformers
from test_interop import TINY

import mimkit
from conftest import perturb_weights
from mimkit.cli import main as cli
from mimkit.interop.hf_backbone import (
    default_out_indices,
    feature_maps,
    load_hf_backbone,
    save_hf_backbone,
    to_hf_backbone,
)
from mimkit.registry import list_builders

METHODS = [m for m in TINY if m in list_builders()]
CLASS = {"beit": "BeitBackbone", "simmim_swin": "SwinBackbone", "ijepa": "VitDetBackbone"}
SIZE = {"simmim_swin": 64}  # SwinBackbone always partitions windows: every stage must exceed the window


def tiny(method, **extra):
    recipe, kw = TINY[method]
    kw = {**kw, **extra}
    if method in SIZE:
        kw["img_size"] = SIZE[method]
    return perturb_weights(mimkit.create(recipe, **kw).eval(), trainable_only=True)


@pytest.mark.parametrize("method", METHODS)
def test_backbone_export_matches_mimkit(method, tmp_path):
    model = tiny(method) if method == "simmim_swin" else tiny(method, depth=4)
    save_hf_backbone(model, tmp_path / "bb")
    hf = load_hf_backbone(tmp_path / "bb")
    assert isinstance(hf, transformers.AutoBackbone._model_mapping[type(hf.config)])  # what AutoBackbone loads
    assert type(hf).__name__ == CLASS.get(method, "Dinov2Backbone")
    x = torch.randn(2, model.in_chans, *model.img_size)
    ours = feature_maps(model, x)
    theirs = hf(x).feature_maps
    assert len(ours) == len(theirs) == len(default_out_indices(mimkit.base.feature_encoder(model)))
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.shape[0] == 2
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    # and they are not the same map four times: the blocks change the features
    assert ours[0].shape != ours[-1].shape or not torch.allclose(ours[0], ours[-1], atol=1e-3)


def test_out_indices_and_positions_resized(tmp_path):
    model = tiny("mae", depth=4)
    hf = to_hf_backbone(model, out_indices=[2, 4])
    assert list(hf.config.out_indices) == [2, 4] and len(hf(torch.randn(1, 1, 28, 28)).feature_maps) == 2
    mimkit.save(model, tmp_path / "m")
    big = mimkit.load(tmp_path / "m", img_size=56)
    hf = to_hf_backbone(big)
    x = torch.randn(1, 1, 56, 56)
    assert hf.config.image_size == 56 and hf(x).feature_maps[0].shape[-2:] == (14, 14)
    torch.testing.assert_close(hf(x).feature_maps[-1], feature_maps(big, x)[-1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="out_indices"):
        to_hf_backbone(model, out_indices=[0, 5])


def test_swin_too_small_for_backbone_is_one_clear_error():
    recipe, kw = TINY["simmim_swin"]
    model = mimkit.create(recipe, **kw)  # 32 px: the last stage is as large as its window
    with pytest.raises(ValueError, match="--img-size"):
        to_hf_backbone(model)


def test_cli_export_hf_backbone(tmp_path, capsys):
    model = tiny("ibot", depth=4)
    mimkit.save(model, tmp_path / "m")
    assert cli(["export", "--checkpoint", str(tmp_path / "m"), "--format", "hf-backbone", "--out",
                str(tmp_path / "bb"), "--out-indices", "2", "4", "--img-size", "56"]) == 0
    cfg = json.loads((tmp_path / "bb" / "config.json").read_text())
    assert cfg["architectures"] == ["Dinov2Backbone"] and cfg["out_indices"] == [2, 4] and cfg["image_size"] == 56
    assert "AutoBackbone" in capsys.readouterr().out


@pytest.mark.parametrize("head", ["upernet", "dpt"])
def test_dense_heads_train_on_the_backbone(head, tmp_path):
    from mimkit.eval.segment import build_segmenter

    torch.manual_seed(0)
    model = tiny("mae", depth=4)
    save_hf_backbone(model, tmp_path / "bb")
    seg = build_segmenter(tmp_path / "bb", num_labels=3, head=head, channels=32)
    x = torch.randn(4, 1, 28, 28)
    y = torch.zeros(4, 28, 28, dtype=torch.long)
    y[:, 7:21, 7:21] = 1 + (x[:, 0, 7:21, 7:21] > 0).long()
    opt = torch.optim.AdamW(seg.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = seg(pixel_values=x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
