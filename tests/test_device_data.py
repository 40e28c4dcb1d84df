"""Decode-and-augment on the training device (run here on the CPU: same code path as on a GPU)."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.data.device import DeviceAugment, EncodedImageFolder, collate_encoded


def make_folder(root, n=6, size=(40, 48), corrupt=0, png=0):
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(d / f"img{i}.jpg", quality=95)
    for i in range(png):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "c0" / f"p{i}.png")
    for i in range(corrupt):
        (root / "c1" / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_decode_and_augment_shapes_and_normalisation(tmp_path):
    ds = EncodedImageFolder(make_folder(tmp_path))
    batch = collate_encoded([ds[i] for i in range(len(ds))])
    aug = DeviceAugment(32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), seed=0)
    x = aug(batch["encoded"], batch["paths"], "cpu")
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= (0 - 0.5) / 0.25 - 1e-5 and x.max() <= (1 - 0.5) / 0.25 + 1e-5


def test_full_crop_equals_plain_decode_and_resize(tmp_path):
    """With scale fixed to 1 and ratio 1 on a square image, the crop is the whole image."""
    ds = EncodedImageFolder(make_folder(tmp_path, n=2, size=(32, 32)))
    batch = collate_encoded([ds[0]])
    aug = DeviceAugment(32, mean=(0, 0, 0), std=(1, 1, 1), crop_scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False)
    x = aug(batch["encoded"], batch["paths"], "cpu")
    ref = torch.from_numpy(np.array(Image.open(ds.samples[0][0]).convert("RGB"))).permute(2, 0, 1).float() / 255
    assert (x[0] - ref).abs().max() < 0.02  # libjpeg vs PIL decoders differ by a rounding step at most


def test_mixed_png_and_corrupt_files_are_handled(tmp_path):
    ds = EncodedImageFolder(make_folder(tmp_path, n=4, corrupt=1, png=1))
    batch = collate_encoded([ds[i] for i in range(len(ds))])
    aug = DeviceAugment(16, mean=(0, 0, 0), std=(1, 1, 1), seed=1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        x = aug(batch["encoded"], batch["paths"], "cpu")
    assert x.shape == (6, 3, 16, 16)
    assert any("bad0.jpg" in str(m.message) for m in w) and len(aug.bad) == 1
    strict = DeviceAugment(16, mean=(0, 0, 0), std=(1, 1, 1), on_error="raise")
    with pytest.raises(ValueError, match="bad0.jpg"):
        strict(batch["encoded"], batch["paths"], "cpu")


def test_grayscale_mode_and_seeded_determinism(tmp_path):
    ds = EncodedImageFolder(make_folder(tmp_path, n=3))
    batch = collate_encoded([ds[i] for i in range(3)])
    a = DeviceAugment(16, mean=(0.5,), std=(0.5,), in_chans=1, seed=3)(batch["encoded"], batch["paths"], "cpu")
    b = DeviceAugment(16, mean=(0.5,), std=(0.5,), in_chans=1, seed=3)(batch["encoded"], batch["paths"], "cpu")
    assert a.shape == (3, 1, 16, 16) and torch.equal(a, b)


def test_empty_folder_error(tmp_path):
    (tmp_path / "cls").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        EncodedImageFolder(tmp_path)


def test_pretrain_end_to_end_with_decode_on_device(tmp_path):
    from mimkit.train.config import load_config
    from mimkit.train.run import run_pretrain

    make_folder(tmp_path / "imgs", n=16, size=(36, 40))
    cfg = load_config(None, [
        "model.name=mae_vit_tiny_patch4_28", "model.in_chans=3", "model.embed_dim=32", "model.depth=1",
        "model.num_heads=2", "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.img_size=28",
        "data.name=image_folder", f"data.root={tmp_path / 'imgs'}", "data.img_size=28", "data.in_chans=3",
        "data.batch_size=8", "data.decode_on_device=true", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", f"run.dir={tmp_path / 'run'}", "run.recon_images=0",
    ])
    run_dir = run_pretrain(cfg)
    assert (run_dir / "model" / "model.safetensors").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
