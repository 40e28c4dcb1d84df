"""transformers ``ViTMAEForPreTraining`` <-> mimkit MAE."""
from __future__ import annotations

from ..ops import to_2tuple
from ..registry import create
from .keymap import copy_keys, embedding_keys, load_exact, norm_keys, normalize_hf_keys, vit_layer_keys

# (mimkit key, transformers key) for everything outside the transformer layers
_KEYS = embedding_keys("vit.embeddings", ("cls_token", "pos_embed", "patch_embed")) + norm_keys(
    "encoder.norm", "vit.layernorm") + [(f"decoder.{k}", f"decoder.{k}") for k in (
    "mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias", "decoder_norm.weight",
    "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias")]


def _table(depth: int, decoder_depth: int) -> list:
    return (_KEYS + [k for i in range(depth) for k in vit_layer_keys(f"vit.layers.{i}", f"encoder.blocks.{i}")]
            + [k for i in range(decoder_depth)
               for k in vit_layer_keys(f"decoder.decoder_layers.{i}", f"decoder.decoder_blocks.{i}")])


def _check_act(cfg):
    if cfg.hidden_act not in ("gelu",):
        raise ValueError(f"only hidden_act='gelu' is supported, got {cfg.hidden_act!r}")


def vitmae_from_hf(hf):
    cfg = hf.config
    _check_act(cfg)
    if cfg.intermediate_size / cfg.hidden_size != cfg.decoder_intermediate_size / cfg.decoder_hidden_size:
        raise ValueError("encoder and decoder must share one mlp ratio")
    mlp_ratio = int(cfg.hidden_size * (cfg.intermediate_size / cfg.hidden_size)) / cfg.hidden_size
    model = create("mae", img_size=list(to_2tuple(cfg.image_size)), patch_size=cfg.patch_size,
                   in_chans=cfg.num_channels, embed_dim=cfg.hidden_size, depth=cfg.num_hidden_layers,
                   num_heads=cfg.num_attention_heads, decoder_embed_dim=cfg.decoder_hidden_size,
                   decoder_depth=cfg.decoder_num_hidden_layers,
                   decoder_num_heads=cfg.decoder_num_attention_heads if cfg.decoder_num_hidden_layers else 1,
                   mlp_ratio=mlp_ratio, norm_pix_loss=cfg.norm_pix_loss, mask_ratio=cfg.mask_ratio,
                   norm_eps=cfg.layer_norm_eps)
    sd = normalize_hf_keys(hf.state_dict())
    out = copy_keys(sd, _table(cfg.num_hidden_layers, cfg.decoder_num_hidden_layers), {}, to_hf=False)
    load_exact(model, out, "ViTMAEForPreTraining -> mimkit MAE")
    return model


def _mae_kwargs(model):
    enc, dec = model.encoder, model.decoder
    blk = enc.blocks[0]
    return dict(img_size=list(model.img_size), patch_size=model.patch_size, in_chans=model.in_chans,
                embed_dim=enc.embed_dim, depth=enc.depth, num_heads=enc.num_heads,
                decoder_embed_dim=dec.decoder_embed_dim, decoder_depth=len(dec.decoder_blocks),
                decoder_num_heads=dec.decoder_blocks[0].attn.num_heads if len(dec.decoder_blocks) else 1,
                mlp_ratio=blk.mlp.fc1.out_features / enc.embed_dim, norm_pix_loss=model.norm_pix_loss,
                mask_ratio=model.mask_ratio, norm_eps=enc.norm.eps)


def vitmae_to_hf(model):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    kw = _mae_kwargs(model)
    if kw["img_size"][0] != kw["img_size"][1]:
        raise ValueError("transformers ViTMAE needs a square image_size")
    cfg = ViTMAEConfig(
        hidden_size=kw["embed_dim"], num_hidden_layers=kw["depth"], num_attention_heads=kw["num_heads"],
        intermediate_size=int(kw["embed_dim"] * kw["mlp_ratio"]), image_size=kw["img_size"][0],
        patch_size=kw["patch_size"], num_channels=kw["in_chans"], decoder_hidden_size=kw["decoder_embed_dim"],
        decoder_num_hidden_layers=kw["decoder_depth"], decoder_num_attention_heads=kw["decoder_num_heads"],
        decoder_intermediate_size=int(kw["decoder_embed_dim"] * kw["mlp_ratio"]),
        norm_pix_loss=kw["norm_pix_loss"], mask_ratio=kw["mask_ratio"], layer_norm_eps=kw["norm_eps"],
        hidden_act="gelu", qkv_bias=True, architectures=["ViTMAEForPreTraining"],
    )
    hf = ViTMAEForPreTraining(cfg)
    out = copy_keys(model.state_dict(), _table(kw["depth"], kw["decoder_depth"]), {}, to_hf=True)
    load_exact(hf, {k: v.clone() for k, v in out.items()}, "mimkit MAE -> ViTMAEForPreTraining")
    return hf.eval()


FROM_HF = {"ViTMAEForPreTraining": vitmae_from_hf}
TO_HF = {"mae": vitmae_to_hf}
