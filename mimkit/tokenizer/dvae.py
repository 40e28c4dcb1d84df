"""A discrete VAE that mimkit trains itself: BEiT's visual tokenizer.

Encoder: strided convolutions and residual blocks down by ``downsample`` (a power of two) to a grid of
``img/downsample`` positions, then a 1x1 convolution to logits over ``vocab_size`` codes. Training
relaxes the discrete choice with Gumbel-softmax at temperature ``tau`` (annealed from
``temperature`` to ``temperature_min`` over the first ``anneal_fraction`` of training, geometric in
the step, through the ``on_train_step(step, total_steps)`` hook the Lightning engine calls); the
soft one-hot mixes rows of a codebook (``vocab_size`` x ``code_dim``) that the convolutional decoder
turns back into an image. Loss = reconstruction (MSE or L1) + ``kl_weight`` * KL(q || uniform prior),
q = softmax of the encoder logits at each position, + ``usage_weight`` * KL(batch-mean q || uniform):
the second term spreads usage over the codebook without flattening each position's distribution (on
Fashion-MNIST, without it the codes collapse to a handful within a few dozen steps). In eval mode the codes are hard (argmax), which
is exactly what BEiT sees: ``encode_ids(images) -> (N, h*w)``.

``forward(images)`` returns a :class:`~mimkit.base.MIMOutput` so the generic pretraining engine
trains it: ``pred`` = reconstruction as patches of ``downsample`` pixels (one patch per token, so
``unpatchify`` gives the image back), ``mask`` = zeros (nothing is hidden), ``extra`` = PSNR,
perplexity and share of codes used in the batch, temperature, KL and reconstruction loss.

PSNR is measured in pixel space: when the data pipeline normalises images, give its
``pixel_mean``/``pixel_std`` so the tokenizer can undo it (values are clamped to [0, 1]).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..base import MIMModel, MIMOutput
from ..ops import check_image_size, token_grid


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        hid = max(ch // 2, 8)
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(ch, hid, 3, padding=1),
            nn.ReLU(), nn.Conv2d(hid, hid, 3, padding=1),
            nn.ReLU(), nn.Conv2d(hid, ch, 1),
        )

    def forward(self, x):
        return x + self.net(x)


def perplexity_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the empirical code distribution: vocab size when codes are used uniformly,
    1 when a single code is used."""
    p = counts.double() / counts.sum().clamp_min(1)
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum()
    return ent.exp().float()


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-image PSNR (dB) of images in [0, 1]."""
    mse = ((pred.float() - target.float()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(1.0 / mse)).mean()


class DiscreteVAE(MIMModel):
    """Args:
        img_size, in_chans: the images it tokenizes; vocab_size: codes; downsample: pixels per token side
            (a power of two); hidden_dim, num_res_blocks, code_dim: the conv encoder/decoder and codebook.
        kl_weight, usage_weight: KL to a uniform prior and the codebook-usage term; temperature,
            temperature_min, anneal_fraction, straight_through: the Gumbel-softmax relaxation schedule.
        recon_loss: ``"mse"`` or ``"l1"``; pixel_mean, pixel_std: the data normalisation (PSNR in pixels).

    ``encode_ids(images (N, C, H, W))`` -> (N, h*w) ids; ``decode_ids(ids, grid)`` -> images.
    """

    method = "dvae"

    def __init__(self, img_size=28, in_chans: int = 1, vocab_size: int = 512, downsample: int = 4,
                 hidden_dim: int = 64, num_res_blocks: int = 1, code_dim: int = 64,
                 kl_weight: float = 1e-3, temperature: float = 1.0, temperature_min: float = 1 / 16,
                 anneal_fraction: float = 0.8, straight_through: bool = False, recon_loss: str = "mse",
                 usage_weight: float = 0.0, pixel_mean=None, pixel_std=None):
        super().__init__(img_size, downsample, in_chans)
        if downsample < 2 or downsample & (downsample - 1):
            raise ValueError(f"downsample must be a power of two >= 2 (e.g. 4 or 8), got {downsample}")
        check_image_size(self.img_size, downsample)
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        if recon_loss not in ("mse", "l1"):
            raise ValueError(f"recon_loss must be 'mse' or 'l1', got {recon_loss!r}")
        if not 0 < temperature_min <= temperature:
            raise ValueError(f"need 0 < temperature_min <= temperature, got {temperature_min} and {temperature}")
        if not 0 < anneal_fraction <= 1:
            raise ValueError(f"anneal_fraction must be in (0, 1], got {anneal_fraction}")
        if (pixel_mean is None) != (pixel_std is None):
            raise ValueError("give both pixel_mean and pixel_std (the data normalisation) or neither")
        self.vocab_size, self.downsample, self.code_dim = vocab_size, downsample, code_dim
        self.grid_size = (self.img_size[0] // downsample, self.img_size[1] // downsample)
        self.kl_weight, self.recon_loss, self.usage_weight = float(kl_weight), recon_loss, float(usage_weight)
        self.temperature_start, self.temperature_min = float(temperature), float(temperature_min)
        self.anneal_fraction, self.straight_through = float(anneal_fraction), straight_through
        # saved with the weights; forward reads the python float (no device sync, compile friendly)
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self._tau = float(temperature)
        for name, v in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
            t = None if v is None else torch.as_tensor(v, dtype=torch.float32).reshape(1, -1, 1, 1)
            if t is not None and t.shape[1] not in (1, in_chans):
                raise ValueError(f"{name} has {t.shape[1]} values; give 1 or in_chans={in_chans}")
            self.register_buffer(name, t, persistent=False)

        # no convolution runs at full resolution: the first one already halves it (cheap on CPU)
        n_down = int(math.log2(downsample))
        enc = [nn.Conv2d(in_chans, hidden_dim, 4, stride=2, padding=1)]
        for _ in range(n_down - 1):
            enc += [ResBlock(hidden_dim) for _ in range(num_res_blocks)]
            enc += [nn.ReLU(), nn.Conv2d(hidden_dim, hidden_dim, 4, stride=2, padding=1)]
        enc += [ResBlock(hidden_dim) for _ in range(num_res_blocks)]
        enc += [nn.ReLU(), nn.Conv2d(hidden_dim, vocab_size, 1)]
        self.encoder = nn.Sequential(*enc)
        self.codebook = nn.Embedding(vocab_size, code_dim)
        dec = [nn.Conv2d(code_dim, hidden_dim, 1)]
        dec += [ResBlock(hidden_dim) for _ in range(num_res_blocks)]
        for _ in range(n_down - 1):
            dec += [nn.ReLU(), nn.ConvTranspose2d(hidden_dim, hidden_dim, 4, stride=2, padding=1)]
            dec += [ResBlock(hidden_dim) for _ in range(num_res_blocks)]
        dec += [nn.ReLU(), nn.ConvTranspose2d(hidden_dim, in_chans, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*dec)

    # ---- schedule ------------------------------------------------------------------------------
    def temperature_at(self, step: int, total_steps: int) -> float:
        """Geometric annealing from ``temperature`` to ``temperature_min`` over the first
        ``anneal_fraction * total_steps`` steps, then constant."""
        span = max(1.0, self.anneal_fraction * max(int(total_steps), 1))
        frac = min(1.0, max(0, int(step)) / span)
        return self.temperature_start * (self.temperature_min / self.temperature_start) ** frac

    def on_train_step(self, step: int, total_steps: int) -> None:
        self._tau = self.temperature_at(step, total_steps)
        self.temperature.fill_(self._tau)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._tau = float(self.temperature)

    # ---- pieces --------------------------------------------------------------------------------
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder logits (N, vocab, h, w)."""
        self.check_input(images)
        return self.encoder(images)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Decode a (soft or hard) one-hot code map (N, vocab, h, w) into images."""
        z = torch.einsum("nkhw,kd->ndhw", codes.to(self.codebook.weight.dtype), self.codebook.weight)
        return self.decoder(z)

    def decode_ids(self, ids: torch.Tensor, grid=None) -> torch.Tensor:
        """Images (N, C, H, W) from token ids (N, h*w) or (N, h, w)."""
        ids = token_grid(ids, grid or self.grid_size)
        z = self.codebook(ids).permute(0, 3, 1, 2)
        return self.decoder(z)

    @torch.no_grad()
    def encode_ids(self, images: torch.Tensor) -> torch.Tensor:
        """Token ids (N, h*w): argmax of the encoder logits, row-major over the token grid."""
        return self.logits(images).argmax(1).flatten(1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, **kwargs) -> torch.Tensor:
        """Encoder logits per token position (N, h*w, vocab)."""
        return self.logits(images).flatten(2).transpose(1, 2)

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the data normalisation (if known) and clamp to [0, 1]."""
        if self.pixel_mean is not None:
            images = images * self.pixel_std + self.pixel_mean
        return images.clamp(0, 1)

    # ---- training ------------------------------------------------------------------------------
    def forward(self, images, noise=None, mask=None) -> MIMOutput:
        """``noise``/``mask`` are accepted for a uniform method signature and ignored."""
        logits = self.logits(images)
        if self.training:
            codes = F.gumbel_softmax(logits.float(), tau=self._tau, hard=self.straight_through, dim=1)
        else:
            codes = F.one_hot(logits.argmax(1), self.vocab_size).permute(0, 3, 1, 2).float()
        rec = self.decode_codes(codes)
        if self.recon_loss == "mse":
            rec_loss = F.mse_loss(rec.float(), images.float())
        else:
            rec_loss = F.l1_loss(rec.float(), images.float())
        log_q = F.log_softmax(logits.float(), dim=1)
        q = log_q.exp()
        kl = (q * (log_q + math.log(self.vocab_size))).sum(1).mean()
        loss = rec_loss + self.kl_weight * kl
        # optional: KL of the batch's average code distribution to uniform (spreads usage across the
        # codebook without flattening each position's distribution)
        q_avg = q.mean((0, 2, 3))
        usage_kl = (q_avg * (torch.log(q_avg.clamp_min(1e-12)) + math.log(self.vocab_size))).sum()
        if self.usage_weight:
            loss = loss + self.usage_weight * usage_kl
        with torch.no_grad():
            ids = logits.argmax(1).flatten()
            counts = torch.bincount(ids, minlength=self.vocab_size)
            extra = {
                "recon_loss": rec_loss.detach(),
                "kl": kl.detach(),
                "usage_kl": usage_kl.detach(),
                "psnr": psnr(self.to_pixels(rec.detach().float()), self.to_pixels(images.float())),
                "perplexity": perplexity_from_counts(counts),
                "code_usage": (counts > 0).float().mean(),
                "temperature": torch.tensor(self._tau, device=images.device),
            }
        pred = self.patchify(rec)
        mask = torch.zeros(pred.shape[:2], device=images.device)
        return MIMOutput(loss=loss, pred=pred, mask=mask, extra=extra)

    @torch.no_grad()
    def reconstruct(self, images, noise=None, mask=None) -> torch.Tensor:
        """Reconstruction from the hard codes (what the tokenizer's ids carry), (N, C, H, W)."""
        return self.decode_ids(self.encode_ids(images), self.grid(images))
