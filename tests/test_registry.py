"""The registry: one table of builders and recipes, ``create`` as the only place that sets
``mimkit_config``, and ``build_from_config`` as its inverse."""
import pytest
import torch

import mimkit
from mimkit.registry import build_from_config, builder_name, get_builder, list_builders, list_models, option_names


def test_recipes_and_builders_are_listed_and_resolved():
    assert {"mae", "simmim", "simmim_swin", "maskfeat", "beit", "dvae", "dalle_encoder"} <= set(list_builders())
    assert "mae_vit_tiny_patch4_28" in list_models() and "mae" not in list_models()
    assert builder_name("mae_vit_base_patch16") == "mae" and builder_name("mae") == "mae"
    assert get_builder("simmim_vit_tiny_patch4_28") is get_builder("simmim")
    assert {"mask_ratio", "norm_pix_loss"} <= option_names("mae")
    assert {"tokenizer_path", "tokenizer_config"} <= option_names("beit")  # config-level options


def test_create_records_the_config_and_build_from_config_rebuilds_it():
    m = mimkit.create("mae_vit_tiny_patch4_28", depth=1, mask_ratio=0.6)
    assert m.mimkit_config["recipe"] == "mae_vit_tiny_patch4_28" and m.mimkit_config["depth"] == 1
    again = build_from_config(m.mimkit_config)
    assert again.mimkit_config == m.mimkit_config and again.mask_ratio == 0.6
    b = mimkit.create("mae", img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2)
    assert b.mimkit_config["recipe"] is None and b.mimkit_config["builder"] == "mae"
    assert type(build_from_config(b.mimkit_config)) is type(b)


def test_a_built_part_is_recorded_by_its_config():
    tok = mimkit.create("dvae_tiny_28", hidden_dim=8, code_dim=8, vocab_size=16)
    m = mimkit.create("beit_vit_tiny_patch4_28", embed_dim=16, depth=1, num_heads=2, vocab_size=16,
                      tokenizer_config=tok.mimkit_config)
    assert m.mimkit_config["tokenizer_config"] == tok.mimkit_config
    m.tokenizer.load_state_dict(tok.state_dict())
    back = build_from_config(m.mimkit_config)
    back.load_state_dict(m.state_dict())
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(back.tokenize(x), m.tokenize(x))


def test_clear_errors():
    with pytest.raises(KeyError, match="Did you mean mae_vit_tiny_patch4_28"):
        mimkit.create("mae_vit_tiny_patch4_82")
    with pytest.raises(ValueError, match="unknown option 'mask_ration'.*did you mean mask_ratio"):
        mimkit.create("mae_vit_tiny_patch4_28", mask_ration=0.5)
    with pytest.raises(ValueError, match="unknown builder 'nope'"):
        build_from_config({"recipe": None, "builder": "nope"})
    with pytest.raises(ValueError, match="neither 'recipe' nor 'builder'"):
        build_from_config({"depth": 1})
