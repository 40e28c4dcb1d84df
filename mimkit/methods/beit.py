"""BEiT (Bao et al. 2021): predict the visual tokens of masked patches.

Model = :class:`~mimkit.encoders.beit.BEiTEncoder` (mask token, shared relative position bias with
the 3 cls entries, layer scale, no key bias) whose final LayerNorm feeds a Linear(width, vocab)
head applied to the hidden (masked) positions only; loss = cross-entropy against the tokenizer's ids
there; ``extra["mask_acc"]`` = masked-token accuracy. Masks come from BEiT block-wise masking (75 of
196 patches, blocks of at least 16, for ViT-B/16 at 224 px).

**Two-view pipeline.** The targets are ``tokenizer.encode_ids`` of a second view of the *same* crop
at the tokenizer's own resolution (the reference uses 224 px for BEiT and 112 px for the DALL-E
tokenizer). ``forward(images)`` builds that view itself: it resizes the (already augmented) batch to
``grid * tokenizer_downsample`` pixels (bilinear, antialiased) so each token lands on one BEiT patch;
pass ``tokenizer_images`` to supply another view, or ``labels`` to skip the tokenizer. Both views
carry the data pipeline's normalisation, so train the tokenizer on the same data settings (``mimkit
tokenizer train`` does); a DALL-E encoder undoes it through its ``pixel_mean``/``pixel_std``.

The tokenizer (``tokenizer_path``: a run directory / ``model`` dir / ``.safetensors`` written by
``mimkit tokenizer train``, or a DALL-E encoder state dict) is a frozen submodule: no gradients, no
weight decay, always in eval mode, ids computed under ``no_grad`` in float32. Its weights are saved
with the model and its architecture in ``mimkit_config["tokenizer_config"]``, so a saved BEiT loads
without the original tokenizer file.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import MIMModel, MIMOutput
from ..encoders.beit import BEiTEncoder
from ..losses import masked_cross_entropy
from ..masking import BlockMasking, build_masking
from ..registry import register_builder, register_recipe

NO_TOKENIZER = (
    "BEiT needs visual-token targets but this model has no tokenizer and no labels were given. Train one "
    "first, e.g. `mimkit tokenizer train --config configs/dvae_tiny_28.yaml` (writes runs/dvae_tiny_28/model), "
    "then create the model with tokenizer_path=runs/dvae_tiny_28/model (config key model.tokenizer_path), "
    "or pass labels=<(N, num_patches) token ids>."
)


class BEiT(MIMModel):
    method = "beit"

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, vocab_size=8192, qkv_bias=True, norm_eps=1e-6, layer_scale_init_value=0.1,
                 use_shared_relative_position_bias=True, use_relative_position_bias=False,
                 use_absolute_position_embeddings=False, drop_path_rate=0.1, head_norm=False,
                 num_masking_patches=75, min_num_patches=16, max_num_patches=None, masking="block",
                 masking_kwargs=None, tokenizer_path=None, tokenizer_config=None):
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
            self.masking = build_masking(masking, **(masking_kwargs or {}))
        self.mask_fraction = int(num_masking_patches) / num_patches
        self.tokenizer = self._build_tokenizer(tokenizer_path, tokenizer_config)
        if vocab_size is None:
            if self.tokenizer is None:
                raise ValueError("vocab_size=None takes the tokenizer's vocabulary, but no tokenizer_path was given")
            vocab_size = self.tokenizer.vocab_size
        if self.tokenizer is not None and self.tokenizer.vocab_size != vocab_size:
            raise ValueError(f"the tokenizer has {self.tokenizer.vocab_size} codes but vocab_size={vocab_size}; "
                             f"set vocab_size={self.tokenizer.vocab_size} (or vocab_size=None)")
        self.vocab_size = int(vocab_size)
        self.head_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if head_norm else nn.Identity()
        self.lm_head = nn.Linear(embed_dim, self.vocab_size)
        nn.init.trunc_normal_(self.lm_head.weight, std=0.02)
        nn.init.zeros_(self.lm_head.bias)

    # ---- tokenizer -------------------------------------------------------------------------------
    @staticmethod
    def _build_tokenizer(path, config):
        if config:
            from ..checkpoint import build_from_config

            tok = build_from_config(config)  # weights arrive with the BEiT state dict
        elif path:
            from ..tokenizer import load_tokenizer

            tok = load_tokenizer(path)
        else:
            return None
        tok.eval()
        for p in tok.parameters():
            p.requires_grad_(False)
        return tok

    @property
    def mimkit_config(self):
        cfg = dict(self.__dict__.get("_mimkit_config") or {})
        if cfg and self.tokenizer is not None and not cfg.get("tokenizer_config"):
            tok_cfg = getattr(self.tokenizer, "mimkit_config", None)
            if tok_cfg:
                cfg["tokenizer_config"] = dict(tok_cfg)
        return cfg

    @mimkit_config.setter
    def mimkit_config(self, value):
        self.__dict__["_mimkit_config"] = dict(value)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.tokenizer is not None:
            self.tokenizer.eval()
        return self

    def tokenizer_view(self, images: torch.Tensor) -> torch.Tensor:
        """The same crop at the tokenizer's resolution: ``grid * downsample`` pixels per side."""
        tok = self.tokenizer
        down = tok.img_size[0] // tok.grid_size[0], tok.img_size[1] // tok.grid_size[1]
        gh, gw = self.grid(images)
        size = (gh * down[0], gw * down[1])
        if tuple(images.shape[-2:]) == size:
            return images
        return F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True)

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor, tokenizer_images: torch.Tensor | None = None) -> torch.Tensor:
        """Target ids (N, L) from the frozen tokenizer on the second view."""
        if self.tokenizer is None:
            raise ValueError(NO_TOKENIZER)
        view = self.tokenizer_view(images) if tokenizer_images is None else tokenizer_images
        if view.shape[1] != self.tokenizer.in_chans:
            raise ValueError(f"the tokenizer takes {self.tokenizer.in_chans} channel(s) but its view has {view.shape[1]}")
        with torch.autocast(view.device.type, enabled=False):
            ids = self.tokenizer.encode_ids(view.float())
        n, L = images.shape[0], self.grid(images)[0] * self.grid(images)[1]
        if ids.shape != (n, L):
            raise ValueError(f"the tokenizer gives {ids.shape[1]} ids per image but BEiT has {L} patches; "
                             "tokenizer_images must be a view whose token grid matches the patch grid")
        return ids

    # ---- masking -------------------------------------------------------------------------------
    def make_mask(self, images, noise=None, mask=None) -> torch.Tensor:
        n, grid = images.shape[0], self.grid(images)
        L = grid[0] * grid[1]
        if mask is not None:
            if mask.numel() != n * L:
                raise ValueError(f"mask must have shape (batch, num_patches) = {(n, L)}, got {tuple(mask.shape)}")
            return mask.reshape(n, L).to(images.device).bool()
        if noise is not None:
            if noise.shape != (n, L):
                raise ValueError(f"noise must have shape (batch, num_patches) = {(n, L)}, got {tuple(noise.shape)}")
            # same meaning as MAE: the patches with the largest noise are hidden
            k = max(1, int(round(L * self.mask_fraction)))
            ids = noise.argsort(1, descending=True)[:, :k]
            return torch.zeros(n, L, dtype=torch.bool, device=images.device).scatter_(1, ids.to(images.device), True)
        return self.masking(n, grid, device=images.device).bool()

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
        n, L = mask.shape
        user_labels = labels is not None
        if labels is None:
            labels = self.tokenize(images, tokenizer_images)
        labels = labels.to(images.device).long()
        if labels.shape == (n, L):
            target = labels[mask]
        elif labels.ndim == 1 and labels.numel() == int(mask.sum()):
            target = labels
        else:
            raise ValueError(f"labels must be (batch, num_patches) = {(n, L)} ids or one id per hidden patch "
                             f"({int(mask.sum())}), got shape {tuple(labels.shape)}")
        if user_labels and target.numel():
            self.check_label_range(target)
        enc = self.encoder(images, mask=mask, output_attentions=output_attentions)
        logits = self.head(enc.last_hidden_state[:, 1:][mask])
        loss = masked_cross_entropy(logits, target)
        extra = {"mask_acc": (logits.detach().argmax(-1) == target).float().mean(), "labels": target}
        if output_attentions:
            extra["attentions"] = enc.attentions
        return MIMOutput(loss=loss, pred=logits, mask=mask.float(), extra=extra)

    def check_label_range(self, target: torch.Tensor) -> None:
        """Ids outside the vocabulary: a clear error on CPU; on an accelerator an asynchronous device
        assert (no host sync per step)."""
        if target.device.type == "cpu":
            lo, hi = int(target.min()), int(target.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"label ids must lie in [0, {self.vocab_size}); got [{lo}, {hi}]")
        else:
            torch._assert_async((target >= 0).all() & (target < self.vocab_size).all(),
                                f"BEiT label ids must lie in [0, {self.vocab_size})")

    @torch.no_grad()
    def token_logits(self, images, mask=None) -> torch.Tensor:
        """Logits (N, L, vocab) at every patch (hidden ones given by ``mask``, if any)."""
        enc = self.encoder(images, mask=None if mask is None else self.make_mask(images, mask=mask))
        return self.head(enc.last_hidden_state[:, 1:])


register_builder("beit", BEiT)

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
