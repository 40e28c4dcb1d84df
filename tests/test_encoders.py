"""One contract for every encoder (ViT in its variants, BEiT, Swin): output shapes, what the mask token
does, the visible-only mode, other resolutions, and hidden states / attentions on request."""
import pytest
import torch

from conftest import perturb_weights
from mimkit.encoders import BEiTEncoder, SwinEncoder, ViTEncoder

# name -> (factory, native size, another size it runs at (None: fixed size), tokens per image at 28 px
ENCODERS = {
    "vit_sincos": lambda: ViTEncoder(28, 4, 1, 32, 2, 2, use_mask_token=True),
    "vit_learned": lambda: ViTEncoder(28, 4, 1, 32, 2, 2, use_mask_token=True, pos_embed="learned"),
    "vit_no_cls": lambda: ViTEncoder(28, 4, 1, 32, 2, 2, use_mask_token=True, class_token=False),
    "beit": lambda: BEiTEncoder(28, 4, 1, 32, 2, 2, use_relative_position_bias=True),
    "swin": lambda: SwinEncoder(32, 4, 1, 16, (1, 1), (1, 2), window_size=4),
}


class TestEncoderContract:
    @pytest.fixture(params=sorted(ENCODERS))
    def enc(self, request):
        torch.manual_seed(0)
        return perturb_weights(ENCODERS[request.param](), trainable_only=True).eval()

    @staticmethod
    def size(enc):
        return enc.img_size[0]

    @staticmethod
    def prefix(enc):
        return getattr(enc, "num_prefix_tokens", 0)

    def test_output_shape(self, enc):
        x = torch.randn(3, 1, self.size(enc), self.size(enc))
        out = enc(x).last_hidden_state
        if isinstance(enc, SwinEncoder):
            assert out.shape == (3, (32 // enc.stride) ** 2, enc.num_features)
        else:
            assert out.shape == (3, self.prefix(enc) + enc.num_patches, enc.embed_dim)

    def test_hidden_patches_are_replaced_by_the_mask_token(self, enc):
        s = self.size(enc)
        x, y = torch.randn(2, 1, s, s), torch.randn(2, 1, s, s)
        L = (s // enc.patch_size) ** 2
        none, some, every = torch.zeros(2, L), torch.zeros(2, L), torch.ones(2, L)
        some[:, : L // 2] = 1
        assert torch.allclose(enc(x, mask=none).last_hidden_state, enc(x).last_hidden_state, atol=1e-6)
        assert not torch.allclose(enc(x, mask=some).last_hidden_state, enc(x).last_hidden_state)
        # everything hidden: the image no longer matters at all
        assert torch.allclose(enc(x, mask=every).last_hidden_state, enc(y, mask=every).last_hidden_state, atol=1e-6)
        with pytest.raises(ValueError, match="mask must have shape"):
            enc(x, mask=torch.zeros(2, L + 1))

    def test_visible_only_mode_is_permutation_equivariant(self, enc):
        if isinstance(enc, SwinEncoder):
            pytest.skip("Swin attends in windows of the full grid: no visible-only mode")
        x = torch.randn(2, 1, 28, 28)
        ids = torch.stack([torch.randperm(49)[:12] for _ in range(2)])
        out = enc(x, ids_keep=ids).last_hidden_state
        p = self.prefix(enc)
        assert out.shape == (2, p + 12, enc.embed_dim)
        flip = ids.flip(1)
        again = enc(x, ids_keep=flip).last_hidden_state
        assert torch.allclose(again[:, p:], out[:, p:].flip(1), atol=1e-5)  # positions travel with the tokens

    def test_other_resolutions(self, enc):
        x = torch.randn(2, 1, 36, 20)
        if isinstance(enc, SwinEncoder):
            with pytest.raises(ValueError, match="built for 32x32 images"):
                enc(x)
            return
        assert enc(x).last_hidden_state.shape == (2, self.prefix(enc) + 9 * 5, enc.embed_dim)
        with pytest.raises(ValueError, match="not divisible by patch size 4"):
            enc(torch.randn(1, 1, 30, 28))

    def test_hidden_states_and_attentions_on_request(self, enc):
        x = torch.randn(2, 1, self.size(enc), self.size(enc))
        plain = enc(x)
        assert plain.hidden_states is None and plain.attentions is None
        if isinstance(enc, SwinEncoder):
            out = enc(x, output_hidden_states=True)
            assert len(out.hidden_states) == 1 + len(enc.layers)
            with pytest.raises(ValueError, match="no global attention maps"):
                enc(x, output_attentions=True)
            return
        out = enc(x, output_hidden_states=True, output_attentions=True)
        assert torch.allclose(out.last_hidden_state, plain.last_hidden_state, atol=1e-5)
        assert len(out.hidden_states) == len(enc.blocks) + 1
        assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
        T = self.prefix(enc) + enc.num_patches
        assert len(out.attentions) == len(enc.blocks)
        for a in out.attentions:
            assert a.shape == (2, enc.num_heads, T, T)
            assert torch.allclose(a.sum(-1), torch.ones(2, enc.num_heads, T), atol=1e-5)
