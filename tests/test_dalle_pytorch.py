"""BEiT's "customized" tokenizer (issue 15, part 2): a DALLE-pytorch ``DiscreteVAE`` loads from its
``pytorch_model.bin`` and gives the reference's ids and reconstructions.

The reference here is written in this file from the layout's description (BEiT's
``modeling_discrete_vae.py``): ``num_layers`` x [4x4 stride-2 conv + ReLU, residual block], a 1x1
conv to ``num_tokens`` logits, ``nn.Embedding(num_tokens, codebook_dim)``, a mirrored transposed-conv
decoder; ids = argmax of the logits; inputs normalised with mean 0.5 / std 0.5 as BEiT feeds it."""
import json
import math

import pytest
import torch
from torch import nn

import mimkit
from mimkit.cli import main
from mimkit.tokenizer import DallePytorchDVAE, load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


class RefResBlock(nn.Module):
    def __init__(self, chan_in, hidden, chan_out):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(chan_in, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, chan_out, 1))

    def forward(self, x):
        return self.net(x) + x


class RefDiscreteVAE(nn.Module):
    def __init__(self, num_tokens=8192, codebook_dim=512, num_layers=3, hidden_dim=256, channels=3):
        super().__init__()
        self.codebook = nn.Embedding(num_tokens, codebook_dim)
        enc, dec = [], []
        enc_in, dec_in = channels, codebook_dim
        for _ in range(num_layers):
            enc.append(nn.Sequential(nn.Conv2d(enc_in, hidden_dim, 4, stride=2, padding=1), nn.ReLU()))
            enc.append(RefResBlock(hidden_dim, hidden_dim, hidden_dim))
            dec.append(nn.Sequential(nn.ConvTranspose2d(dec_in, hidden_dim, 4, stride=2, padding=1), nn.ReLU()))
            dec.append(RefResBlock(hidden_dim, hidden_dim, hidden_dim))
            enc_in = dec_in = hidden_dim
        enc.append(nn.Conv2d(hidden_dim, num_tokens, 1))
        dec.append(nn.Conv2d(hidden_dim, channels, 1))
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    @torch.no_grad()
    def get_codebook_indices(self, images):  # images normalised to [-1, 1]
        return self.encoder(images).argmax(dim=1)

    @torch.no_grad()
    def decode(self, img_seq):  # (N, n) -> images in the normalised space
        emb = self.codebook(img_seq)
        side = math.isqrt(emb.shape[1])
        return self.decoder(emb.reshape(emb.shape[0], side, side, -1).permute(0, 3, 1, 2))


def reference(channels=3, num_layers=2, num_tokens=64, codebook_dim=16, hidden_dim=8):
    ref = RefDiscreteVAE(num_tokens, codebook_dim, num_layers, hidden_dim, channels).eval()
    with torch.no_grad():  # random, non-default weights: every tensor matters
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return ref


def ref_ids_and_images(ref, pixels):
    ids = ref.get_codebook_indices((pixels - 0.5) / 0.5).flatten(1)
    return ids, ref.decode(ids) * 0.5 + 0.5


def test_beits_configuration_has_the_reference_state_dict():
    ours, ref = DallePytorchDVAE().state_dict(), RefDiscreteVAE().state_dict()  # BEiT's 8192/3/512/256
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}
    tok = DallePytorchDVAE()
    assert tok.grid_size == (14, 14) and tok.vocab_size == 8192 and tok.img_size == (112, 112)


def test_import_gives_the_reference_ids_and_reconstructions(tmp_path, capsys):
    ref = reference()
    torch.save({"weights": ref.state_dict()}, tmp_path / "pytorch_model.bin")  # BEiT's file layout
    assert main(["tokenizer", "import", "--format", "dalle-pytorch", "--weights", str(tmp_path / "pytorch_model.bin"),
                 "--out", str(tmp_path / "tok"), "--image-size", "32"]) == 0
    assert "model.tokenizer_path=" in capsys.readouterr().out
    tok = load_tokenizer(tmp_path / "tok")
    assert isinstance(tok, DallePytorchDVAE)
    assert (tok.num_layers, tok.vocab_size, tok.codebook_dim, tok.hidden_dim, tok.in_chans) == (2, 64, 16, 8, 3)
    x = torch.rand(6, 3, 32, 32)
    ids, rec = ref_ids_and_images(ref, x)
    assert ids.unique().numel() > 4  # a meaningful comparison, not one constant code
    assert torch.equal(tok.encode_ids(x), ids)
    assert torch.allclose(tok.decode_ids(ids), rec, atol=1e-5)
    assert torch.allclose(tok.reconstruct(x), rec, atol=1e-5)
    # the state dict file itself works as a tokenizer path too (told from DALL-E's by its keys)
    assert torch.equal(load_tokenizer(tmp_path / "pytorch_model.bin", img_size=32).encode_ids(x), ids)
    # and `tokenizer stats` reports the reconstruction's PSNR
    torch.save(x, tmp_path / "x.pt")
    assert main(["tokenizer", "stats", "--tokenizer", str(tmp_path / "tok"), "--images", str(tmp_path / "x.pt"),
                 "--out", str(tmp_path / "report")]) == 0
    assert "PSNR" in capsys.readouterr().out
    stats = json.loads((tmp_path / "report" / "stats.json").read_text())
    expected = float((10 * torch.log10(1 / ((rec.clamp(0, 1) - x) ** 2).flatten(1).mean(1))).mean())
    assert stats["psnr"] == pytest.approx(expected, abs=1e-3)


def test_normalised_inputs_are_mapped_back_to_pixels(tmp_path):
    ref = reference()
    torch.save({"weights": ref.state_dict()}, tmp_path / "pytorch_model.bin")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    assert main(["tokenizer", "import", "--format", "dalle-pytorch", "--weights", str(tmp_path / "pytorch_model.bin"),
                 "--out", str(tmp_path / "tok"), "--image-size", "32", "--mean", *map(str, mean),
                 "--std", *map(str, std)]) == 0
    tok = load_tokenizer(tmp_path / "tok")
    x = torch.rand(4, 3, 32, 32)
    xn = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    ids, rec = ref_ids_and_images(ref, x)
    assert torch.equal(tok.encode_ids(xn), ids)
    assert torch.allclose(tok.to_pixels(tok.decode_ids(ids)), rec.clamp(0, 1), atol=1e-5)


def test_beit_uses_it_through_tokenizer_path(tmp_path):
    ref = reference(channels=1)  # 28 px grayscale, 2 layers: the 7x7 grid of beit_vit_tiny_patch4_28
    torch.save({"weights": ref.state_dict()}, tmp_path / "pytorch_model.bin")
    assert main(["tokenizer", "import", "--format", "dalle-pytorch", "--weights", str(tmp_path / "pytorch_model.bin"),
                 "--out", str(tmp_path / "tok"), "--image-size", "28"]) == 0
    beit = mimkit.create("beit_vit_tiny_patch4_28", embed_dim=16, depth=1, num_heads=2, vocab_size=None,
                         tokenizer_path=str(tmp_path / "tok"))
    assert beit.vocab_size == 64
    x = torch.rand(3, 1, 28, 28)
    ids, _ = ref_ids_and_images(ref, x)
    assert torch.equal(beit.tokenize(x), ids)
    assert torch.isfinite(beit(x).loss)
    mimkit.save(beit, tmp_path / "beit")  # the tokenizer travels inside the saved BEiT
    assert torch.equal(mimkit.load(tmp_path / "beit").tokenize(x), ids)


def test_shapes_must_agree_with_the_weights(tmp_path, capsys):
    torch.save({"weights": reference().state_dict()}, tmp_path / "pytorch_model.bin")
    capsys.readouterr()
    assert main(["tokenizer", "import", "--format", "dalle-pytorch", "--weights", str(tmp_path / "pytorch_model.bin"),
                 "--out", str(tmp_path / "tok"), "--num-tokens", "8192"]) == 2
    assert "num_tokens=8192 was given but the weights in" in capsys.readouterr().err
    torch.save({"weights": {"foo": torch.zeros(1)}}, tmp_path / "other.bin")
    assert main(["tokenizer", "import", "--format", "dalle-pytorch", "--weights", str(tmp_path / "other.bin"),
                 "--out", str(tmp_path / "tok")]) == 2
    assert "not a DALLE-pytorch DiscreteVAE state dict" in capsys.readouterr().err
