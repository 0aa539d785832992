"""A small Qwen2-architecture decoder with a byte-level tokenizer (no download).

The paper fine-tunes Qwen2-7B; we keep its architecture (RMSNorm, SwiGLU, RoPE,
grouped-query attention) through ``transformers.Qwen2ForCausalLM`` but train a
few-million-parameter model from random initialisation, so that the whole
accuracy pipeline fits a short GPU run. Depth is the parameter that matters
for the receptive-field argument; see ``notebooks/04_figure3_passkey.ipynb``
for why we use 8 layers.

Attention patterns are switched through ``lib.hf_attention`` (block-sparse
attention registered with transformers); ``set_pattern`` is the one place
that maps a pattern name and a sequence length to a mask configuration.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from lib.masks import PATTERNS, paper_stride


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, plus PAD, BOS and EOS.

    ``vocab_size`` is padded to a multiple of 8 (unused ids never appear).
    """

    PAD, BOS, EOS = 256, 257, 258
    vocab_size = 264

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        ids = list(text.encode("utf-8"))
        return ([self.BOS] if bos else []) + ids + ([self.EOS] if eos else [])

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


#: Defaults of the scaled model (hidden 128, 8 layers, 4 query / 2 key-value heads).
MODEL_DEFAULTS = dict(
    num_layers=8,
    hidden_size=128,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=384,
    max_position_embeddings=8192,
    rope_theta=100000.0,
)


def model_config(**overrides) -> dict:
    """Complete, validated model parameters (the dict that goes into cache keys)."""
    unknown = set(overrides) - set(MODEL_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown model parameter(s) {sorted(unknown)}; accepted: {sorted(MODEL_DEFAULTS)}")
    cfg = {**MODEL_DEFAULTS, **overrides}
    for key in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size", "max_position_embeddings"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"model parameter {key!r} must be a positive integer, got {v!r}")
    if cfg["hidden_size"] % cfg["num_heads"]:
        raise ValueError(f"hidden_size {cfg['hidden_size']} must be divisible by num_heads {cfg['num_heads']}")
    if cfg["num_heads"] % cfg["num_kv_heads"]:
        raise ValueError(f"num_heads {cfg['num_heads']} must be divisible by num_kv_heads {cfg['num_kv_heads']}")
    cfg["rope_theta"] = float(cfg["rope_theta"])
    return cfg


def build_model(seed: int = 0, **params):
    """Randomly initialised ``Qwen2ForCausalLM`` (seeded), full causal attention (SDPA)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = model_config(**params)
    hf_cfg = Qwen2Config(
        vocab_size=ByteTokenizer.vocab_size,
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=cfg["num_heads"],
        num_key_value_heads=cfg["num_kv_heads"],
        max_position_embeddings=cfg["max_position_embeddings"],
        rope_parameters={"rope_type": "default", "rope_theta": cfg["rope_theta"]},
        tie_word_embeddings=True,
        pad_token_id=ByteTokenizer.PAD,
        bos_token_id=ByteTokenizer.BOS,
        eos_token_id=ByteTokenizer.EOS,
        use_cache=False,
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(hf_cfg)
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def pattern_config(pattern: str, seq_len: int, block_size: int) -> dict:
    """Mask configuration of ``pattern`` at ``seq_len`` tokens.

    All patterns use their Section 4.1 defaults (lib.masks) except stride
    slash, whose stride the paper does not give: we use
    ``paper_stride(num_blocks)`` at every length, i.e. 3 slash blocks and the
    same 10-block row budget as the other patterns (stride 32 at 128 blocks,
    64 at 256 blocks).
    """
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {list(PATTERNS)}")
    if pattern == "stride_slash":
        return {"stride": paper_stride(math.ceil(seq_len / block_size))}
    return {}


def set_pattern(model, pattern: str, seq_len: int, block_size: int, backend: str = "reference"):
    """Switch every attention layer of ``model`` to ``pattern`` (for sequences of ``seq_len``).

    Goes through ``lib.hf_attention.use_sparse_attention`` for every pattern;
    "full" (the paper's control) runs causal SDPA there. Calling it again
    replaces the settings (e.g. stride slash's stride at another length).
    """
    from lib import hf_attention

    cfg = pattern_config(pattern, seq_len, block_size)
    return hf_attention.use_sparse_attention(model, pattern, block_size=block_size, backend=backend, **cfg)


def save_model(model, directory, extra: dict | None = None) -> Path:
    """Weights (safetensors, float32) and our model parameters as JSON."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    # Tied embeddings: keep one copy (safetensors refuses shared storage).
    state.pop("lm_head.weight", None)
    tmp = directory / "model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(directory / "model.safetensors")
    (directory / "model.json").write_text(json.dumps(extra or {}, indent=2, sort_keys=True) + "\n")
    return directory


def load_model(directory, model_params: dict, device="cpu"):
    """Build the model of ``model_params`` and load the weights saved in ``directory``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    model = build_model(seed=0, **model_params)
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise ValueError(f"checkpoint {path} does not match the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.to(device)
