"""iBOT's encoder leaves as a transformers ViTModel (the class DINO checkpoints use) whose tokens equal
mimkit's, student or teacher as evaluation reads it, and a ViTModel comes back as an iBOT to continue
pretraining; `mimkit export --format hf` writes it."""
import pytest
import torch

import mimkit
from mimkit.interop.hf import from_hf, to_hf

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(embed_dim=32, depth=2, num_heads=2, out_dim=64, hidden_dim=32, bottleneck_dim=16)


def _trained(eval_teacher=False):
    torch.manual_seed(0)
    m = mimkit.create("ibot_vit_tiny_patch7_28", eval_teacher=eval_teacher, **TINY)
    with torch.no_grad():  # student and teacher apart, as after training
        for p in m.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("eval_teacher", [False, True])
def test_vitmodel_tokens_equal_mimkit(eval_teacher):
    m = _trained(eval_teacher)
    hf = to_hf(m)
    assert type(hf).__name__ == "ViTModel"
    x = torch.randn(3, 1, 28, 28)
    ours = m.encode(x)
    theirs = hf(pixel_values=x).last_hidden_state
    assert torch.allclose(theirs, ours, atol=1e-5)
    other = (m.encoder if eval_teacher else m.teacher.encoder)(x).last_hidden_state
    assert not torch.allclose(theirs, other, atol=1e-3)  # it is the one evaluation reads, not the other


def test_a_vitmodel_comes_back_as_ibot_and_trains(tmp_path):
    hf = to_hf(_trained())
    hf.save_pretrained(tmp_path / "hf")
    back = from_hf(tmp_path / "hf")
    assert back.method == "ibot"
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(back.encode(x), hf(pixel_values=x).last_hidden_state, atol=1e-5)
    assert torch.allclose(back.teacher.encoder(x).last_hidden_state, back.encode(x), atol=1e-6)
    back.train()
    out = back(x, views=[torch.randn(2, 1, 28, 28)] + [torch.randn(2, 1, 14, 14) for _ in range(4)])
    out.loss.backward()
    assert torch.isfinite(out.loss) and back.encoder.blocks[0].attn.qkv.weight.grad is not None


def test_export_command_writes_a_vitmodel(tmp_path):
    from transformers import ViTModel

    from mimkit.cli import main

    mimkit.save(_trained(), tmp_path / "model")
    assert main(["export", "--checkpoint", str(tmp_path / "model"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    hf = ViTModel.from_pretrained(tmp_path / "hf")
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(hf(pixel_values=x).last_hidden_state, mimkit.load(tmp_path / "model").encode(x), atol=1e-5)
