import json
import math

import pytest
import torch

import mimkit
from mimkit.cli import main
from mimkit.tokenizer import (
    DALLEEncoder,
    DiscreteVAE,
    codebook_stats,
    load_dalle_encoder,
    load_tokenizer,
    map_pixels,
    perplexity_from_counts,
    psnr,
    unmap_pixels,
)


def tiny(**kw):
    args = dict(vocab_size=32, hidden_dim=16, code_dim=8)
    args.update(kw)
    return mimkit.create("dvae_tiny_28", **args)


def test_dvae_output_contract():
    m = tiny()
    x = torch.randn(4, 1, 28, 28)
    out = m(x)
    assert out.pred.shape == (4, 49, 16) and out.mask.shape == (4, 49) and not out.mask.any()
    for k in ("psnr", "perplexity", "code_usage", "temperature", "kl", "usage_kl", "recon_loss"):
        assert out.extra[k].ndim == 0, k
    assert 1.0 <= float(out.extra["perplexity"]) <= 32 and 0 < float(out.extra["code_usage"]) <= 1
    ids = m.encode_ids(x)
    assert ids.shape == (4, 49) and ids.dtype == torch.long and ids.min() >= 0 and ids.max() < 32
    assert torch.equal(ids, m.logits(x).argmax(1).flatten(1))
    assert m.grid_size == (7, 7) and m.encode(x).shape == (4, 49, 32)
    # eval: hard codes; pred is the reconstruction from the ids, as patches of `downsample` pixels
    m.eval()
    out = m(x)
    assert torch.allclose(m.unpatchify(out.pred, (7, 7)), m.reconstruct(x), atol=1e-5)
    assert m.reconstruct(x).shape == x.shape
    # loss = reconstruction + kl_weight * KL(q || uniform) [+ usage_weight * KL(mean q || uniform)]
    m2 = tiny(kl_weight=0.1, usage_weight=0.5).eval()
    o = m2(x)
    assert torch.allclose(o.loss, o.extra["recon_loss"] + 0.1 * o.extra["kl"] + 0.5 * o.extra["usage_kl"])
    assert 0 <= float(o.extra["usage_kl"]) <= float(o.extra["kl"]) + 1e-6  # convexity
    # other sizes: the grid follows the image
    assert m.encode_ids(torch.randn(1, 1, 56, 32)).shape == (1, 14 * 8)


def test_temperature_annealing_hook():
    m = tiny(temperature=1.0, temperature_min=0.0625, anneal_fraction=0.5)
    taus = []
    for step in (0, 25, 50, 75, 99):
        m.on_train_step(step, 100)
        taus.append(float(m.temperature))
    assert taus[0] == pytest.approx(1.0)
    assert taus[1] == pytest.approx(0.25)  # geometric: halfway through the annealing span
    assert taus[2] == pytest.approx(0.0625) and taus[4] == pytest.approx(0.0625)
    assert all(a >= b for a, b in zip(taus, taus[1:]))
    m.train()
    assert float(m(torch.randn(2, 1, 28, 28)).extra["temperature"]) == pytest.approx(0.0625)
    # the temperature is saved with the weights (a resumed run continues the schedule)
    assert float(m.state_dict()["temperature"]) == pytest.approx(0.0625)


def test_dvae_trains_and_reconstruction_improves():
    from mimkit.data import load_fashion_mnist

    imgs, _ = load_fashion_mnist("test")
    x = (imgs[:32].float().unsqueeze(1) / 255 - 0.286) / 0.353
    m = tiny(vocab_size=64, hidden_dim=16, kl_weight=0.05)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    m.eval()
    first = m(x).extra["recon_loss"]
    m.train()
    losses = []
    for step in range(40):
        m.on_train_step(step, 40)
        out = m(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.extra["recon_loss"]))
    m.eval()
    last = m(x).extra["recon_loss"]  # hard codes: what BEiT's targets carry
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5
    assert last < 0.7 * first
    assert m.codebook.weight.grad is not None


def test_perplexity_and_codebook_stats():
    assert float(perplexity_from_counts(torch.ones(16))) == pytest.approx(16, rel=1e-5)
    assert float(perplexity_from_counts(torch.tensor([0, 0, 5, 0]))) == pytest.approx(1.0)
    counts = torch.tensor([1.0, 3.0])
    p = counts / 4
    assert float(perplexity_from_counts(counts)) == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-5)
    m = tiny().eval()
    data = [torch.randn(8, 1, 28, 28), (torch.randn(4, 1, 28, 28), torch.zeros(4))]
    s = codebook_stats(m, data)
    ids = torch.cat([m.encode_ids(data[0]), m.encode_ids(data[1][0])])
    ref = torch.bincount(ids.flatten(), minlength=32)
    assert torch.equal(s["counts"], ref) and s["num_tokens"] == 12 * 49 and s["num_images"] == 12
    assert s["codes_used"] == int((ref > 0).sum()) and s["code_usage"] == pytest.approx(s["codes_used"] / 32)
    assert s["perplexity"] == pytest.approx(float(perplexity_from_counts(ref)), rel=1e-5)
    rec = torch.cat([m.reconstruct(data[0]), m.reconstruct(data[1][0])])
    orig = torch.cat([data[0], data[1][0]])
    assert s["psnr"] == pytest.approx(float(psnr(m.to_pixels(rec), m.to_pixels(orig))), rel=1e-4)
    with pytest.raises(ValueError, match="no images"):
        codebook_stats(m, [])


def test_dvae_bad_config():
    with pytest.raises(ValueError, match="power of two"):
        tiny(downsample=3)
    with pytest.raises(ValueError, match="not divisible"):
        tiny(img_size=30)
    with pytest.raises(ValueError, match="both pixel_mean and pixel_std"):
        tiny(pixel_std=None)
    with pytest.raises(ValueError, match="channel"):
        tiny()(torch.randn(2, 3, 28, 28))


# ---- DALL-E encoder ------------------------------------------------------------------------------

def test_dalle_encoder_architecture_matches_dall_e():
    enc = DALLEEncoder()  # the released configuration, random weights
    sd = enc.state_dict()
    assert sd["blocks.input.w"].shape == (256, 3, 7, 7)
    assert sd["blocks.group_1.block_1.res_path.conv_1.w"].shape == (64, 256, 3, 3)
    assert "blocks.group_1.block_1.id_path.w" not in sd  # identity when widths agree
    assert sd["blocks.group_2.block_1.id_path.w"].shape == (512, 256, 1, 1)
    assert sd["blocks.group_4.block_2.res_path.conv_4.w"].shape == (2048, 512, 1, 1)
    assert sd["blocks.output.conv.w"].shape == (8192, 2048, 1, 1)
    assert enc.blocks.group_1.block_1.post_gain == 1 / 64
    assert enc.grid_size == (14, 14) and enc.vocab_size == 8192
    x = torch.rand(1, 3, 16, 16)
    assert enc.forward(map_pixels(x)).shape == (1, 8192, 2, 2)
    assert enc.encode_ids(x).shape == (1, 4)


def test_dalle_encoder_load_reproduces_ids(tmp_path):
    enc = DALLEEncoder(img_size=32, n_hid=16, vocab_size=64).eval()
    x = torch.rand(3, 3, 32, 32)
    ids = enc.encode_ids(x)
    assert ids.shape == (3, 16) and torch.equal(ids, enc.encode_ids(x))  # deterministic
    torch.save(enc.state_dict(), tmp_path / "enc.pt")
    back = load_dalle_encoder(tmp_path / "enc.pt", img_size=32)
    assert (back.n_hid, back.vocab_size, back.group_count, back.n_blk_per_group) == (16, 64, 4, 2)
    assert torch.equal(back.encode_ids(x), ids)
    # prefixed keys, safetensors, load_tokenizer dispatch, mimkit.save/load
    torch.save({f"encoder.{k}": v for k, v in enc.state_dict().items()}, tmp_path / "pref.pth")
    assert torch.equal(load_tokenizer(tmp_path / "pref.pth", img_size=32).encode_ids(x), ids)
    from safetensors.torch import save_file

    save_file(enc.state_dict(), str(tmp_path / "enc.safetensors"))
    assert torch.equal(load_tokenizer(tmp_path / "enc.safetensors", img_size=32).encode_ids(x), ids)
    mimkit.save(back, tmp_path / "saved")
    assert torch.equal(mimkit.load(tmp_path / "saved").encode_ids(x), ids)
    # normalised inputs are mapped back to [0, 1] first
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    norm = load_dalle_encoder(tmp_path / "enc.pt", img_size=32, pixel_mean=mean, pixel_std=std)
    xn = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.equal(norm.encode_ids(xn), ids)
    assert torch.allclose(unmap_pixels(map_pixels(x)), x, atol=1e-6)


def test_dalle_bad_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a plain state dict"):
        load_dalle_encoder(tmp_path / "junk.pt")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a DALL-E encoder state dict"):
        load_dalle_encoder(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_dalle_encoder(tmp_path / "missing.pt")


# ---- command line -------------------------------------------------------------------------------

def test_cli_encode_stats_and_import(tmp_path, capsys):
    from PIL import Image

    m = tiny().eval()
    mimkit.save(m, tmp_path / "tok")
    imgs = tmp_path / "imgs" / "a"
    imgs.mkdir(parents=True)
    for i in range(3):
        Image.fromarray((torch.rand(28, 28) * 255).byte().numpy(), "L").save(imgs / f"{i}.png")
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "tok"), "--images", str(tmp_path / "imgs"),
                 "--out", str(tmp_path / "ids.pt")]) == 0
    saved = torch.load(tmp_path / "ids.pt")
    assert saved["ids"].shape == (3, 49) and saved["grid"] == [7, 7] and saved["files"] == ["a/0.png", "a/1.png", "a/2.png"]
    # the same ids as encoding the normalised tensor directly
    from mimkit.tokenizer.io import load_images, tokenizer_normalization

    x, _ = load_images(str(tmp_path / "imgs"), 28, 1, *tokenizer_normalization(m))
    assert torch.equal(saved["ids"], m.encode_ids(x))
    torch.save(x, tmp_path / "x.pt")
    assert main(["tokenizer", "stats", "--tokenizer", str(tmp_path / "tok"), "--images", str(tmp_path / "x.pt"),
                 "--out", str(tmp_path / "report")]) == 0
    text = capsys.readouterr().out
    assert "PSNR" in text and "perplexity" in text and "codebook usage" in text
    stats = json.loads((tmp_path / "report" / "stats.json").read_text())
    assert stats["num_images"] == 3 and stats["vocab_size"] == 32
    assert (tmp_path / "report" / "reconstructions.png").stat().st_size > 1000
    # DALL-E import
    enc = DALLEEncoder(img_size=32, n_hid=8, vocab_size=16)
    torch.save(enc.state_dict(), tmp_path / "dalle.pt")
    assert main(["tokenizer", "import-dalle", "--weights", str(tmp_path / "dalle.pt"), "--out", str(tmp_path / "d"),
                 "--img-size", "32"]) == 0
    assert load_tokenizer(tmp_path / "d").vocab_size == 16
    # clear one-line errors
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "nope"), "--images", "x", "--out", "y"]) == 2
    assert "mimkit tokenizer train" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_train_runs_the_engine_and_reports(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["tokenizer", "train", "--config", "configs/dvae_tiny_28.yaml", "model.hidden_dim=8",
                 "model.vocab_size=16", "model.code_dim=8", "data.limit=128", "data.batch_size=64",
                 "trainer.max_steps=2", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                 f"run.dir={run}", "run.recon_images=0", "--stats-images", "64"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "codebook usage" in out and f"model.tokenizer_path={run / 'model'}" in out
    stats = json.loads((run / "tokenizer_stats.json").read_text())
    assert stats["num_images"] == 64 and stats["vocab_size"] == 16 and stats["psnr"] > 0
    assert (run / "tokenizer_reconstructions.png").exists()
    tok = load_tokenizer(run)
    assert isinstance(tok, DiscreteVAE) and tok.vocab_size == 16
    assert float(tok.temperature) < 1.0  # the engine called on_train_step
    # a MIM recipe is refused with a pointer to the right command
    assert main(["tokenizer", "train", "--config", "configs/mae_vit_tiny_patch4_28.yaml"]) == 2
    assert "not a tokenizer recipe" in capsys.readouterr().err
