"""Every shipped YAML config parses and builds its model; overrides are checked."""
from pathlib import Path

import pytest

import mimkit
from mimkit.train.config import load_config, model_kwargs

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds(path):
    cfg = load_config(path)
    name, kw = model_kwargs(cfg)
    if kw.get("tokenizer_path"):
        kw["tokenizer_path"] = None  # tokenizer runs are made by `mimkit tokenizer train`
    if name.startswith("beit") and kw.get("vocab_size") is None:
        kw["vocab_size"] = 64
    model = mimkit.create(name, **kw)
    assert model.in_chans == cfg["data"]["in_chans"]
    assert cfg["data"]["img_size"] % model.patch_size == 0


def test_overrides_parse_and_reject_unknown_keys():
    cfg = load_config(None, ["trainer.max_epochs=3", "optim.betas=[0.9, 0.99]", "model.mask_ratio=0.6"])
    assert cfg["trainer"]["max_epochs"] == 3 and cfg["optim"]["betas"] == [0.9, 0.99]
    assert cfg["model"]["mask_ratio"] == 0.6
    with pytest.raises(ValueError, match="did you mean max_epochs"):
        load_config(None, ["trainer.max_epoch=3"])
    with pytest.raises(ValueError, match="unknown config section"):
        load_config(None, ["trainr.max_epochs=3"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(None, ["max_epochs"])


def test_overrides_read_numbers_as_a_user_writes_them():
    from mimkit.train.config import parse_overrides

    got = parse_overrides(["optim.blr=3e-3", "optim.lr=1.5e-4", "model.name=mae_vit_tiny_patch4_28", "data.crop_scale=[0.3,1]",
                           "run.dir=runs/a.b", "trainer.compile=true"])
    assert got["optim"] == {"blr": 0.003, "lr": 0.00015}  # YAML alone reads 3e-3 as a string
    assert got["model"]["name"] == "mae_vit_tiny_patch4_28" and got["run"]["dir"] == "runs/a.b"
    assert got["data"]["crop_scale"] == [0.3, 1] and got["trainer"]["compile"] is True
