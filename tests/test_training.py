"""lib.model, lib.training and lib.evaluation on a tiny model (CPU, seconds)."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from lib import masks, training
from lib.evaluation import (accuracy_table, alpha_curves, evaluate_passkey, passkey_cache_path, sample_hops,
                            wilson_interval)
from lib.model import build_model, count_parameters, load_model, pattern_config, save_model, set_pattern
from lib.receptive_field import reachable_within
from lib.training import (TimeBudgetExceeded, check_backend, is_trained, model_spec_for_length, pipeline_config,
                          pipeline_specs, prune_weights, spec_hash, stage_dir, train_pipeline, train_stage)

TINY = dict(
    block_size=16,
    model=dict(num_layers=2, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64,
               max_position_embeddings=512),
    corpus=dict(name="synthetic", max_docs=3),
    base=dict(seq_len=128, steps=3, batch_tokens=512, lr=3e-3, warmup=1),
    cpt=dict(seq_len=256, steps=2, batch_tokens=512, lr=2e-3, warmup=1),
    finetune=dict(lengths=[128, 256], steps=[3, 2], batch_tokens=512, lr=2e-3, warmup=1),
    long=dict(lengths=[512], steps=2, patterns=["power"]),
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POWERATTN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_model_is_seeded_and_round_trips(tmp_path):
    cfg = pipeline_config(TINY)["model"]
    a, b = build_model(seed=1, **cfg), build_model(seed=1, **cfg)
    c = build_model(seed=2, **cfg)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))
    assert count_parameters(a) > 0
    save_model(a, tmp_path / "m")
    d = load_model(tmp_path / "m", cfg)
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        assert torch.allclose(a(input_ids=ids).logits, d(input_ids=ids).logits)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nothing", cfg)


def test_model_config_errors():
    with pytest.raises(ValueError, match="unknown model parameter"):
        build_model(depth=3)
    with pytest.raises(ValueError, match="divisible"):
        build_model(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="positive integer"):
        build_model(num_layers=0)


def test_pattern_config_keeps_three_slash_blocks():
    assert pattern_config("stride_slash", 4096, 32) == {"stride": 32}
    assert pattern_config("stride_slash", 8192, 32) == {"stride": 64}
    assert pattern_config("power", 4096, 32) == {}
    for L in (512, 4096, 8192):
        nb = L // 32
        budget = masks.blocks_per_row("stride_slash", nb, **pattern_config("stride_slash", L, 32)).max()
        assert budget <= 10
    with pytest.raises(ValueError, match="unknown pattern"):
        pattern_config("random", 512, 32)


def test_sparse_model_matches_its_mask():
    """The wired model under a pattern equals the same model run with the dense token mask."""
    cfg = pipeline_config(TINY)["model"]
    model = build_model(seed=0, **cfg).eval()
    ids = torch.randint(0, 256, (1, 100))
    set_pattern(model, "power", 100, 16, "reference")
    with torch.no_grad():
        sparse = model(input_ids=ids).logits
    set_pattern(model, "full", 100, 16, "reference")
    with torch.no_grad():
        full = model(input_ids=ids).logits
    # Early tokens see everything under both (power's window covers them); late ones differ.
    assert torch.allclose(sparse[0, :16 * 5], full[0, :16 * 5], atol=1e-5)
    assert not torch.allclose(sparse[0, -1], full[0, -1], atol=1e-5)


def test_pipeline_config_validation():
    with pytest.raises(ValueError, match="unknown pipeline parameter"):
        pipeline_config({"epochs": 3})
    with pytest.raises(ValueError, match="unknown pipeline parameter"):
        pipeline_config({"base": {"stepz": 3}})
    with pytest.raises(ValueError, match="steps"):
        pipeline_config({"base": {"steps": -1}})
    with pytest.raises(ValueError, match="curriculum"):
        pipeline_config({"finetune": {"lengths": [2048, 1024], "steps": 10}})
    with pytest.raises(ValueError, match="lists 1 values"):
        pipeline_config({"finetune": {"lengths": [512, 1024], "steps": [10]}})
    with pytest.raises(ValueError, match="max_position_embeddings"):
        pipeline_config({"long": {"lengths": [16384]}})


def test_specs_chain_and_hashes():
    cfg = pipeline_config(TINY)
    chain = pipeline_specs(cfg, "power")
    assert [(s["kind"], s["pattern"], s["seq_len"], s["steps"]) for s in chain] == [
        ("lm", "full", 128, 3), ("lm", "power", 256, 2), ("passkey", "power", 128, 3),
        ("passkey", "power", 256, 2), ("passkey", "power", 512, 2)]
    assert all(child["parent"] == parent for parent, child in zip(chain, chain[1:]))
    assert len(pipeline_specs(cfg, "dilated")) == 4  # no long stage
    # The base is shared; everything downstream of a changed parameter gets a new key.
    other = pipeline_specs(pipeline_config({**TINY, "base": {**TINY["base"], "steps": 4}}), "power")
    assert spec_hash(chain[0]) != spec_hash(other[0])
    assert all(spec_hash(a) != spec_hash(b) for a, b in zip(chain, other))
    assert spec_hash(pipeline_specs(cfg, "dilated")[0]) == spec_hash(chain[0])
    assert model_spec_for_length(cfg, "power", 200)["seq_len"] == 256
    assert model_spec_for_length(cfg, "power", 512)["seq_len"] == 512
    assert model_spec_for_length(cfg, "dilated", 512)["seq_len"] == 256
    with pytest.raises(ValueError, match="unknown pattern"):
        pipeline_specs(cfg, "bogus")


def _weights(spec):
    from safetensors.torch import load_file
    return load_file(str(stage_dir(spec) / "model.safetensors"))


def test_train_stage_caches_and_resumes_identically(cache, monkeypatch):
    cfg = pipeline_config({**TINY, "base": {**TINY["base"], "steps": 6}})
    base = pipeline_specs(cfg, "power")[0]

    # Uninterrupted run.
    out = train_stage(base, device="cpu", progress=False)
    assert is_trained(base) and (out / "model.safetensors").exists()
    history = json.loads((out / "history.json").read_text())["history"]
    assert [h["step"] for h in history] == list(range(6)) and all(np.isfinite(h["loss"]) for h in history)
    reference = _weights(base)
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert train_stage(base, device="cpu", progress=False) == out  # cached: nothing retrained
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime

    # Interrupted run: a fake clock passes the deadline after a few steps, then we resume.
    (out / "model.safetensors").unlink()
    (out / "spec.json").unlink()
    clock = itertools.count(0.0, 1.0)
    monkeypatch.setattr(training.time, "monotonic", lambda: next(clock))
    with pytest.raises(TimeBudgetExceeded, match="progress saved"):
        train_stage(base, device="cpu", progress=False, deadline=7.0, save_every_s=1e9)
    partial = torch.load(out / "partial.pt", weights_only=False)
    assert 0 < partial["step"] < 6
    monkeypatch.undo()
    monkeypatch.setenv("POWERATTN_CACHE", str(cache))
    train_stage(base, device="cpu", progress=False)
    assert not (out / "partial.pt").exists()
    resumed = _weights(base)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_pruned_stages_count_as_done_only_without_weights(cache):
    cfg = pipeline_config(TINY)
    folders = train_pipeline(cfg, "sliding_window", device="cpu", progress=False)
    assert len(folders) == 4
    last = pipeline_specs(cfg, "sliding_window")[-1]
    removed = prune_weights([last])
    assert len(removed) == 3 and (stage_dir(last) / "model.safetensors").exists()
    first_ft = pipeline_specs(cfg, "sliding_window")[2]
    assert train_stage(first_ft, need_weights=False, device="cpu", progress=False) == stage_dir(first_ft)
    assert not (stage_dir(first_ft) / "model.safetensors").exists()
    train_stage(first_ft, device="cpu", progress=False)  # needs weights: retrains (deterministically)
    assert (stage_dir(first_ft) / "model.safetensors").exists()


def test_wilson_interval():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(1 - hi) and lo < 0.5 < hi
    lo, hi = wilson_interval(np.array([10, 50]), np.array([10, 100]))
    assert hi[0] == 1 and lo[1] == pytest.approx(0.4038, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_alpha_curves_against_reachability():
    nb = 16
    layout = masks.block_layout("sliding_window", nb, window=3, sink=0)
    rng = np.random.default_rng(0)
    blocks = np.repeat(np.arange(nb), 5)
    correct = rng.random(len(blocks)) < 0.7
    recs = pd.DataFrame(dict(block=blocks, key_blocks=[[b] for b in blocks], correct=correct))
    curves = alpha_curves(recs, layout, range(1, 9))
    for _, row in curves.iterrows():
        inside = reachable_within(layout, int(row.k))[blocks]
        assert row.alpha_hat == pytest.approx(reachable_within(layout, int(row.k)).mean())
        assert row.alpha_bound == pytest.approx(inside.mean())
        assert row.alpha == pytest.approx((correct & inside).mean())
        assert row.retrieved_outside == int((correct & ~inside).sum())
        assert row.alpha <= row.alpha_bound + 1e-12
    # A key whose second copy lies one block later is one hop closer.
    two = pd.DataFrame(dict(block=[4], key_blocks=[[4, 5]], correct=[True]))
    assert sample_hops(two, layout)[0] == sample_hops(pd.DataFrame(dict(block=[5], key_blocks=[[5]])), layout)[0]
    table = accuracy_table(recs.assign(g=blocks % 2), ["g"])
    assert table.n.sum() == len(recs) and ((table.ci_low <= table.accuracy) & (table.accuracy <= table.ci_high)).all()


def test_evaluate_passkey_end_to_end_and_cache(cache, monkeypatch):
    cfg = pipeline_config(TINY)
    spec = model_spec_for_length(cfg, "power", 256)
    recs = evaluate_passkey(spec, 256, samples_per_block=5, device="cpu", progress=False)
    df = pd.DataFrame(recs)
    assert (df.groupby("block").size() >= 5).all()
    assert set(df.columns) >= {"position", "block", "depth", "key_blocks", "passkey", "predicted", "correct"}
    assert (df.correct == (df.passkey == df.predicted)).all()
    assert passkey_cache_path(spec, 256, 5).exists()
    # Second call: served from the cache, no model is loaded.
    monkeypatch.setattr("lib.evaluation.load_model", lambda *a, **k: pytest.fail("model loaded on a cache hit"))
    assert evaluate_passkey(spec, 256, samples_per_block=5, device="cpu", progress=False) == recs
    with pytest.raises(ValueError, match="passkey fine-tuning stage"):
        evaluate_passkey(pipeline_specs(cfg, "power")[0], 256)


def test_check_backend_reference_is_identity():
    assert check_backend("reference")[0] == "reference"
