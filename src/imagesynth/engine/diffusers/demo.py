"""Tiny random-weight pipelines of each family, built offline, for demos and tests.

The weights are random, so the images are seeded noise, but every component is the real
diffusers / transformers class saved with `save_pretrained`: the adapters load these folders
exactly as they load real checkpoints. Tokenizers are made locally from a few sentences, so
nothing touches the network.

The sizes are tuned for speed at full DashScope resolutions (up to 1440x1440, z-image-turbo
2048x2048 pixels) on a small CPU. There the cost is the VAE decoder's work at full resolution
and every attention over latent pixels, so the decoders are 4-8 channels wide at full
resolution, attention runs only at the lowest level, and the Qwen-Image, Wan and Z-Image VAEs
compress 16x instead of 8x (which makes the sizes they generate at multiples of 32; the
adapters read this from the pipeline).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import string
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imagesynth.domain import FAMILIES, Family
from imagesynth.engine.diffusers.pipelines import quiet_logs

MARKER = "imagesynth-demo.json"
# Bump when a builder changes, so folders built by an older version are rebuilt.
VERSION = 5
SEED = 0
# The Stable Diffusion demo's image-prompt adapter, inside its folder in h94/IP-Adapter's
# layout: ip-adapter/ip-adapter.safetensors beside ip-adapter/image_encoder/.
IP_ADAPTER_SUBFOLDER = "ip-adapter"
IP_ADAPTER_WEIGHT_NAME = "ip-adapter.safetensors"
IP_ADAPTER_IMAGE_ENCODER = "image_encoder"

# The tokenizers' vocabularies come from these; what matters is that they cover ordinary prompts.
_CORPUS = [
    "a photo of a cat sitting on a red sofa in the morning light",
    "an oil painting of a mountain lake at sunset, highly detailed",
    "a poster with the text hello world in bold letters",
    "a bird flying over the sea, blue sky, white clouds",
    "portrait of an old man with a beard, black and white photograph",
    "a futuristic city at night with neon lights and rain",
    "watercolor flowers in a glass vase on a wooden table",
    "blurry, low quality, distorted, ugly, bad anatomy, watermark",
    "一只猫坐在红色沙发上",
    "山水画，日落，湖泊",
]


def build_demo_weights(root: Path) -> dict[Family, Path]:
    """Build (or reuse) one tiny pipeline per family under `root/<family>/`.

    Idempotent: a family whose folder is complete is left alone. Atomic: each folder is built
    in a temporary sibling and renamed into place, so concurrent builders never see a
    half-written folder, and the loser of a race uses the winner's.
    """
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    return {family: _ensure(root, family) for family in FAMILIES}


def _marker(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_demo_weights(path: str | Path) -> bool:
    """True when `path` is a folder written by `build_demo_weights` (of any version)."""
    return _marker(path).get("demo") is True


def _is_current(path: Path) -> bool:
    return is_demo_weights(path) and _marker(path).get("version") == VERSION


def _ensure(root: Path, family: Family) -> Path:
    target = root / family
    if _is_current(target):
        return target
    if is_demo_weights(target):
        # Built by an older imagesynth whose demo configs differ: set it aside and rebuild.
        stale = Path(tempfile.mkdtemp(prefix=f".{family}-stale-", dir=root))
        with contextlib.suppress(OSError):  # another process moved it first
            os.rename(target, stale / family)
        shutil.rmtree(stale, ignore_errors=True)
    elif target.exists():
        raise FileExistsError(f"{target} exists but is not a complete demo weights folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the weights are not secret
    try:
        quiet_logs()
        with _seeded(SEED):
            pipe = _BUILDERS[family]()
            pipe.save_pretrained(tmp)
            if family == "stable-diffusion":
                _save_ip_adapter(pipe.unet, tmp / IP_ADAPTER_SUBFOLDER)
        marker = {"demo": True, "family": family, "version": VERSION}
        (tmp / MARKER).write_text(json.dumps(marker) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process renamed its build into place first: use theirs.
            if not _is_current(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    import torch

    # fork_rng restores the global generator afterwards, so building leaves callers' RNG alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _train_bpe(special: list[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    model = json.loads(tok.to_str())["model"]
    pairs = (m.split(" ") if isinstance(m, str) else m for m in model["merges"])
    return model["vocab"], [(a, b) for a, b in pairs]


def _unigram_vocab() -> list[tuple[str, float]]:
    """A SentencePiece-style Unigram vocabulary: whole words and single characters, scored by
    log frequency in the corpus, after the ids T5 expects (<pad> 0, </s> 1, <unk> 2).

    Counted here rather than with tokenizers' UnigramTrainer, whose output differs between
    runs (hash-map order and float ties), which would make builds irreproducible.
    """
    # Every printable ASCII character once, so that ordinary prompts need no <unk>.
    counts: Counter[str] = Counter(string.printable.strip())
    for line in _CORPUS:
        for word in line.split():
            counts["\u2581" + word] += 1
            counts.update("\u2581" + word)
    total = sum(counts.values())
    scored = sorted(
        ((p, math.log(c / total)) for p, c in counts.items()), key=lambda x: (-x[1], x[0])
    )
    return [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *scored]


def _qwen_tokenizer() -> Any:
    """A Qwen2Tokenizer with Qwen's chat tokens, trained on the corpus (Qwen-Image's text
    encoder and Z-Image's both read Qwen-style tokens)."""
    from transformers import Qwen2Tokenizer

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab, merges = _train_bpe(special, vocab_size=400)
    # The hint says list[str], but the BPE model underneath takes (left, right) pairs.
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)  # type: ignore[arg-type]
    tokenizer.add_special_tokens({"additional_special_tokens": special[1:]})
    return tokenizer


def _build_qwen_image() -> Any:
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = _qwen_tokenizer()
    hidden = 16
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": hidden,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": len(tokenizer),
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "bos_token_id": None,
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": hidden,
        },
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=hidden,
        axes_dims_rope=(8, 4, 4),
    )
    # 16x instead of the real 8x: a fifth level makes the latents, the transformer's tokens
    # and the VAE's mid-block attention 4x smaller. The wider low levels make the image follow
    # the seed rather than the random biases.
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 4, 4, 4],
        num_res_blocks=0,
        temperal_downsample=[False, False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def _build_wan() -> Any:
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

    tokenizer = T5Tokenizer(vocab=_unigram_vocab(), extra_ids=0)
    d_model = 32
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=16,
            d_ff=32,
            num_layers=2,
            num_heads=2,
            relative_attention_num_buckets=8,
        )
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=d_model,
        freq_dim=32,
        ffn_dim=32,
        num_layers=1,
        qk_norm="rms_norm_across_heads",
    )
    # Patchified like the Wan 2.2 TI2V-5B VAE: the decoder stops at half resolution and its 12
    # channels unfold into 2x2 RGB pixels (16x in all), a quarter of the full-resolution work.
    vae = AutoencoderKLWan(
        base_dim=8,
        decoder_base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=0,
        temperal_downsample=[False, True, True],
        patch_size=2,
        in_channels=12,
        out_channels=12,
        scale_factor_spatial=16,
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )


def _build_stable_diffusion() -> Any:
    from diffusers import (
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    special = ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate([*chars, *(c + "</w>" for c in chars), *special])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    hidden = 32
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # Attention only at the lowest of four levels and no VAE mid-block attention: at 1024x1024
    # the 128x128 latents make any attention above that level dominate the time.
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8, 8, 16),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = _passthrough_vae()
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


# Qwen3's chat template as far as ZImagePipeline uses it: one user turn and the assistant's
# opening, with an empty think block only when thinking is switched off (the pipeline asks for
# enable_thinking=True, which adds nothing).
_QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def _build_z_image() -> Any:
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = _qwen_tokenizer()
    tokenizer.chat_template = _QWEN3_CHAT_TEMPLATE
    hidden = 16
    # The pipeline reads the second-to-last hidden state: two layers are the fewest that
    # leave one after the embeddings.
    text_encoder = Qwen3Model(
        Qwen3Config(
            hidden_size=hidden,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            vocab_size=len(tokenizer),
            max_position_embeddings=1024,
            bos_token_id=None,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # head dim 16 = sum(axes_dims); axes_lens as in the real model (1024 caption positions,
    # 512 patches a side), which covers the demo's 64 patches a side at 2048 pixels. Any:
    # mypy does not see the pad-token parameters that its __init__ sets.
    transformer: Any = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=1,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        qk_norm=True,
        cap_feat_dim=hidden,
        axes_dims=[8, 4, 4],
        axes_lens=[1024, 512, 512],
    )
    with torch.no_grad():
        # Made with torch.empty (the real ones are trained): seeded values, not memory garbage
        # that can be NaN and would make the build irreproducible.
        transformer.x_pad_token.normal_()
        transformer.cap_pad_token.normal_()
    # 16x instead of the real 8x (five levels), which makes the latents and the transformer's
    # tokens 4x fewer. Four channels throughout with layers_per_block=0 (one decoder resnet per
    # level, none in the encoder, which equal widths keep well-formed) leave a few 4-channel
    # convolutions at full resolution, and no mid-block attention over the latents. The
    # pipeline adds shift_factor unconditionally, so it must be a number.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 5,
        up_block_types=("UpDecoderBlock2D",) * 5,
        block_out_channels=(4, 4, 4, 4, 4),
        layers_per_block=0,
        latent_channels=16,
        norm_num_groups=4,
        mid_block_add_attention=False,
        sample_size=64,
        scaling_factor=1.0,
        shift_factor=0.0,
    )
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def _save_ip_adapter(unet: Any, folder: Path) -> None:
    """A random IP-Adapter for `unet`, saved as `load_ip_adapter` reads h94/IP-Adapter's.

    A tiny CLIP image encoder goes to folder/image_encoder. The adapter's state dict holds the
    image projection (CLIP image embedding -> 4 tokens of the UNet's cross-attention width) and
    a key and value projection for each cross-attention layer, numbered as in the original
    checkpoints: every attention processor counts, so the cross-attention (attn2) ones are odd.
    The value projections are 4x the usual initialisation, so that the reference visibly
    steers the noise (at scale 1 two different references differ by ~5/255 on average).
    """
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=4,
        )
    )
    encoder.save_pretrained(folder / IP_ADAPTER_IMAGE_ENCODER)
    cross = unet.config.cross_attention_dim
    embed = encoder.config.projection_dim
    tokens = 4  # what diffusers' ImageProjection uses for this checkpoint layout

    def linear(out_features: int, in_features: int, gain: float = 1.0) -> torch.Tensor:
        return torch.randn(out_features, in_features) * (gain / math.sqrt(in_features))

    state = {
        "image_proj.proj.weight": linear(cross * tokens, embed),
        "image_proj.proj.bias": torch.zeros(cross * tokens),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue  # self-attention: no image tokens to attend to
        attn = unet.get_submodule(name.removesuffix(".processor"))
        hidden = attn.to_k.out_features
        state[f"ip_adapter.{key_id}.to_k_ip.weight"] = linear(hidden, cross)
        state[f"ip_adapter.{key_id}.to_v_ip.weight"] = linear(hidden, cross, gain=4.0)
        key_id += 2
    save_file({k: v.contiguous() for k, v in state.items()}, folder / IP_ADAPTER_WEIGHT_NAME)


def _passthrough_vae() -> Any:
    """A Stable Diffusion VAE set by hand (not random) so that it roughly passes images through:
    the latent is the image's colour box-averaged to 1/8 size, and the decoder upsamples it
    back. Image-to-image from a reference then visibly keeps the reference, as with a trained
    VAE, which a random one could never show (its decode(encode(x)) is noise).

    Every residual branch is zeroed, so each block is its shortcut; down- and upsampling convs
    are per-channel box / identity filters. Two GroupNorms remain in the path: the encoder's
    pairs each colour channel with a large constant channel, so its statistics barely depend on
    the image; the decoder's is per channel and standardises it, then rescales to a typical
    contrast. Reconstruction error is about 23/255 on a drawing (random VAE: about 80).
    """
    import torch
    from diffusers import AutoencoderKL

    vae: Any = AutoencoderKL(
        block_out_channels=(4, 8, 8, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        mid_block_add_attention=False,
        sample_size=64,
        scaling_factor=2.5,  # latents of a typical image then have a std of about 1
    )
    big = 50.0  # the constant partner of each colour channel in the encoder's GroupNorm

    def pass_channels(conv: Any, pairs: list[tuple[int, int]], box: bool = False) -> None:
        kh, kw = conv.weight.shape[2], conv.weight.shape[3]
        for out, inp in pairs:
            if box:
                conv.weight[out, inp] = 1.0 / (kh * kw)
            else:
                conv.weight[out, inp, kh // 2, kw // 2] = 1.0

    enc, dec = vae.encoder, vae.decoder
    with torch.no_grad():
        for param in vae.parameters():
            param.zero_()
        for module in vae.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.fill_(1.0)
        rgb = [(0, 0), (1, 1), (2, 2)]
        pass_channels(enc.conv_in, rgb)
        # From 4 to 8 channels: colours go to 0, 2, 4, each beside a constant in 1, 3, 5.
        widen = enc.down_blocks[1].resnets[0].conv_shortcut
        pass_channels(widen, [(0, 0), (2, 1), (4, 2)])
        widen.bias[[1, 3, 5]] = big
        for block in enc.down_blocks:
            if block.downsamplers:
                conv = block.downsamplers[0].conv
                pass_channels(conv, [(c, c) for c in range(conv.weight.shape[0])], box=True)
        enc.conv_norm_out.weight.fill_(big / 2)  # undo the ~big/2 spread of each pair ...
        enc.conv_norm_out.bias.fill_(big / 2)  # ... and stay where SiLU is ~linear
        pass_channels(enc.conv_out, [(0, 0), (1, 2), (2, 4)])
        enc.conv_out.bias[4:] = -20.0  # log-variance: a near-certain latent, as when trained
        pass_channels(vae.quant_conv, [(c, c) for c in range(8)])
        pass_channels(vae.post_quant_conv, [(c, c) for c in range(4)])
        pass_channels(dec.conv_in, rgb)
        for block in dec.up_blocks:
            if block.upsamplers:
                conv = block.upsamplers[0].conv
                pass_channels(conv, [(c, c) for c in range(conv.weight.shape[0])])
        pass_channels(dec.up_blocks[3].resnets[0].conv_shortcut, rgb)
        dec.conv_norm_out.weight.fill_(0.5)  # standardised colour -> a typical contrast
        dec.conv_norm_out.bias.fill_(3.0)  # where SiLU is ~linear ...
        pass_channels(dec.conv_out, rgb)
        dec.conv_out.bias.fill_(-3.0)  # ... and back
    return vae


_BUILDERS: dict[Family, Callable[[], Any]] = {
    "qwen-image": _build_qwen_image,
    "wan": _build_wan,
    "stable-diffusion": _build_stable_diffusion,
    "z-image": _build_z_image,
}
