"""BEiT (Bao et al. 2021): predict the visual tokens of masked patches.

:class:`~mimkit.encoders.beit.BEiTEncoder` (mask token, shared relative position bias with the 3 cls
entries, layer scale, no key bias) -> final LayerNorm -> Linear(width, vocab) on the hidden patches
only; cross-entropy against the tokenizer's ids there; ``extra["mask_acc"]`` = masked-token accuracy.
Block-wise masking (75 of 196 patches, blocks of >= 16, for ViT-B/16 at 224 px).

**Two-view pipeline.** The targets are ``tokenizer.encode_ids`` of a second view of the *same* crop
at the tokenizer's own resolution (the reference uses 224 px for BEiT and 112 px for the DALL-E
tokenizer). ``forward(images)`` builds that view itself: it resizes the (already augmented) batch to
``grid * tokenizer_downsample`` pixels (bilinear, antialiased) so each token lands on one BEiT patch;
pass ``tokenizer_images`` to supply another view, or ``labels`` to skip the tokenizer. Both views
carry the data pipeline's normalisation, so train the tokenizer on the same data settings (``mimkit
tokenizer train`` does); a DALL-E encoder undoes it through its ``pixel_mean``/``pixel_std``.

The tokenizer is a frozen submodule: no gradients, no weight decay, always in eval mode, ids computed
under ``no_grad`` in float32. The model receives it built (``tokenizer=``); ``mimkit.create`` and configs
take ``tokenizer_path`` (a run directory / ``model`` dir / ``.safetensors`` written by ``mimkit tokenizer
train``, or a DALL-E encoder state dict) and load it in the config layer
(:func:`mimkit.tokenizer.tokenizer_options`). Its weights are saved with the model and its architecture
in ``mimkit_config["tokenizer_config"]`` (recorded by :func:`mimkit.create`), so a saved BEiT loads
without the original tokenizer file.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import MIMModel, MIMOutput
from ..encoders.beit import BEiTEncoder
from ..losses import masked_cross_entropy
from ..masking import BlockMasking, RandomMasking, masking_for
from ..registry import register_builder, register_recipe
from ..targets import check_token_range, freeze, hidden_labels, token_ids, vocabulary

BEIT_TOKENIZER_OPTIONS = ("tokenizer_path", "tokenizer_config")


class BEiT(MIMModel):
    """Args:
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, norm_eps,
            layer_scale_init_value, use_shared_relative_position_bias, use_relative_position_bias,
            use_absolute_position_embeddings, drop_path_rate: the encoder (:class:`~mimkit.encoders.beit.BEiTEncoder`).
        vocab_size: the tokenizer's vocabulary (None: take it from ``tokenizer``).
        head_norm: an extra LayerNorm before the head (``transformers``' ``use_mean_pooling=False``).
        num_masking_patches, min_num_patches, max_num_patches: BEiT's block-wise masking; or another
            ``masking`` with ``masking_kwargs``.
        tokenizer: a built, frozen tokenizer (``encode_ids``), or None (then pass ``labels`` to forward).

    ``forward(images (N, C, H, W), noise=None, mask=None | (N, L), labels=None)`` -> ``MIMOutput`` with
    ``pred`` = logits (M, vocab) of the M hidden patches (``mask`` order).
    """

    method = "beit"
    frozen_parts = ("tokenizer",)

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 vocab_size: int | None = 8192, qkv_bias: bool = True, norm_eps: float = 1e-6,
                 layer_scale_init_value: float = 0.1, use_shared_relative_position_bias: bool = True,
                 use_relative_position_bias: bool = False, use_absolute_position_embeddings: bool = False,
                 drop_path_rate: float = 0.1, head_norm: bool = False, num_masking_patches: int = 75,
                 min_num_patches: int = 16, max_num_patches: int | None = None, masking: str = "block",
                 masking_kwargs: dict | None = None, tokenizer: nn.Module | None = None):
        super().__init__(img_size, patch_size, in_chans)
        self.encoder = BEiTEncoder(
            img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias=qkv_bias,
            norm_eps=norm_eps, use_mask_token=True,
            use_shared_relative_position_bias=use_shared_relative_position_bias,
            use_relative_position_bias=use_relative_position_bias,
            use_absolute_position_embeddings=use_absolute_position_embeddings,
            layer_scale_init_value=layer_scale_init_value, drop_path_rate=drop_path_rate)
        num_patches = self.encoder.num_patches
        if masking == "block":
            if not 0 < int(num_masking_patches) < num_patches:
                raise ValueError(f"num_masking_patches must be between 1 and {num_patches - 1} (the patch grid "
                                 f"holds {num_patches}), got {num_masking_patches}")
            self.masking = BlockMasking(num_masking_patches=int(num_masking_patches), min_num_patches=min_num_patches,
                                        max_num_patches=max_num_patches, **(masking_kwargs or {}))
        else:
            self.masking = masking_for(masking, None, patch_size, self.encoder.grid_size, masking_kwargs)
        self.mask_fraction = int(num_masking_patches) / num_patches
        # a caller's noise hides the round(L * fraction) patches with the largest noise
        self.noise_masking = RandomMasking(self.mask_fraction, rounding="round") if 0 < self.mask_fraction < 1 else None
        self.tokenizer = freeze(tokenizer)
        self.vocab_size = vocabulary(self.tokenizer, vocab_size)
        self.head_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if head_norm else nn.Identity()
        self.lm_head = nn.Linear(embed_dim, self.vocab_size)
        nn.init.trunc_normal_(self.lm_head.weight, std=0.02)
        nn.init.zeros_(self.lm_head.bias)

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor, tokenizer_images: torch.Tensor | None = None) -> torch.Tensor:
        """Target ids (N, L) from the frozen tokenizer on the second view (see :func:`mimkit.targets.token_ids`)."""
        return token_ids(self.tokenizer, images, self.grid(images), tokenizer_images)

    # ---- forward -------------------------------------------------------------------------------
    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.head_norm(tokens))

    def forward(self, images, noise=None, mask=None, labels=None, tokenizer_images=None,
                output_attentions=False) -> MIMOutput:
        """``labels``: token ids (N, L) for every patch, or (M,) for the hidden ones in row-major
        order (the ``transformers`` convention); default: the tokenizer's ids of the second view.
        Returns ``pred`` = logits (M, vocab) of the hidden patches (``mask`` order)."""
        self.check_input(images)
        user_mask = mask is not None or noise is not None
        mask = self.make_mask(images, noise, mask)
        # Data-dependent checks need a host sync, so they run only on what the caller supplied: the
        # block masking always hides patches and the tokenizer's ids always lie in its vocabulary.
        if user_mask and not mask.any():
            raise ValueError("the mask hides no patch; BEiT's loss is computed on hidden patches only")
        user_labels = labels is not None
        if labels is None:
            labels = self.tokenize(images, tokenizer_images)
        target = hidden_labels(labels.to(images.device), mask)
        if user_labels and target.numel():
            check_token_range(target, self.vocab_size)
        enc = self.encoder(images, mask=mask, output_attentions=output_attentions)
        logits = self.head(enc.last_hidden_state[:, 1:][mask])
        loss = masked_cross_entropy(logits, target)
        extra = {"mask_acc": (logits.detach().argmax(-1) == target).float().mean(), "labels": target}
        if output_attentions:
            extra["attentions"] = enc.attentions
        return MIMOutput(loss=loss, pred=logits, mask=mask.float(), extra=extra)

    @torch.no_grad()
    def token_logits(self, images, mask=None) -> torch.Tensor:
        """Logits (N, L, vocab) at every patch (hidden ones given by ``mask``, if any)."""
        enc = self.encoder(images, mask=None if mask is None else self.make_mask(images, mask=mask))
        return self.head(enc.last_hidden_state[:, 1:])


# tokenizer_path / tokenizer_config are turned into a built tokenizer by mimkit.tokenizer (a layer above the
# core), which registers that step with register_options("beit", ...)
register_builder("beit", BEiT, options=BEIT_TOKENIZER_OPTIONS)

register_recipe(
    "beit_vit_base_patch16", BEiT,
    "BEiT ViT-B/16, 224 px, 8192 visual tokens (needs tokenizer_path, e.g. a dvae_base_112 run)",
    img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, vocab_size=8192,
    layer_scale_init_value=0.1, use_shared_relative_position_bias=True, drop_path_rate=0.1,
    num_masking_patches=75, min_num_patches=16,
)
register_recipe(
    "beit_vit_tiny_patch4_28", BEiT,
    "BEiT on a tiny ViT for 28x28 grayscale (Fashion-MNIST) on CPU, tokens from a dvae_tiny_28 run",
    img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4, vocab_size=512,
    layer_scale_init_value=0.1, use_shared_relative_position_bias=True, drop_path_rate=0.0,
    num_masking_patches=19, min_num_patches=4,
)
