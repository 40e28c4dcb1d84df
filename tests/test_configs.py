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
