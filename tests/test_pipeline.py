"""The accuracy pipeline on a tiny random Llama (a GGUF file written by lib.models): data, units, budget, resume."""
import copy

import numpy as np
import pytest
import torch

from lib import accuracy, claims, pipeline
from lib.data.passkey import PasskeyBuilder, PasskeyTask
from lib.data.text import TokenStream, eval_windows
from lib.models import load_pretrained

TINY = dict(
    model="tiny-llama", block_size=64, design_blocks=16, patterns=["power", "full"], seeds={"default": [0]},
    corpus=dict(name="synthetic", max_train_works=6),
    ppl=dict(lengths=[256], tokens=512, batch_tokens=1024),
    cpt=dict(seq_len=256, steps=2, batch_tokens=512, lr=1e-3, warmup=1),
    finetune=dict(lengths=[256], steps=[2], batch=[2], lr=1e-3, warmup=1, n_digits=5),
    passkey=dict(lengths=[256], samples=4, zero_shot_samples=2, alpha_samples_per_block=1, alpha_seeds=[0]),
    long=dict(seq_len=512, patterns=["power"], samples=2, rope_factor=2.0),
    probing=dict(enabled=False), micro_batch_tokens=1024, eval_batch_tokens=2048, save_every_s=1000,
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    import os

    os.environ["POWERATTN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    return load_pretrained("tiny-llama")[1]


def test_passkey_prompts_are_exact_and_the_needle_stays_in_one_block(tok):
    b = PasskeyBuilder(PasskeyTask(512, 64), tok)
    cols = b.eval_set(2, seed=3)
    assert len(cols["input_ids"]) == 2 * len(b.eligible_blocks)
    for ids, pos, blk, key in zip(cols["input_ids"], cols["position"], cols["block"], cols["passkey"]):
        assert len(ids) == 512
        assert pos // 64 == blk == (pos + b.needle_len - 1) // 64  # the whole needle inside one block
        assert tok.decode(ids[-6:]).strip() == key  # the answer is the key
        assert key in tok.decode(ids[pos:pos + b.needle_len])
    again = b.eval_set(2, seed=3)
    assert all(np.array_equal(a, c) for a, c in zip(cols["input_ids"], again["input_ids"]))
    with pytest.raises(ValueError, match="more than one block"):
        PasskeyBuilder(PasskeyTask(512, 16), tok)
    with pytest.raises(ValueError, match="too short"):
        PasskeyBuilder(PasskeyTask(128, 64), tok)


def test_text_streams_and_windows(tok):
    docs = ["alpha beta gamma. " * 200, "delta epsilon. " * 300]
    s = TokenStream(docs, tok, cache=False)
    a = s.batch(np.random.default_rng(1), 3, 64)
    assert a.shape == (3, 64) and np.array_equal(a, s.batch(np.random.default_rng(1), 3, 64))
    w = eval_windows(docs, tok, 128, 1024, cache=False)
    assert w.shape[1] == 128 and w.shape[0] * 128 <= 1024
    with pytest.raises(ValueError, match="no held-out work"):
        eval_windows(["short"], tok, 128, 1024, cache=False)


def test_config_is_validated_before_any_work():
    with pytest.raises(ValueError, match="unknown pipeline parameter 'cpt.stepz'"):
        pipeline.config(dict(cpt=dict(stepz=3)))
    with pytest.raises(ValueError, match="unknown pattern"):
        pipeline.config(dict(patterns=["powr"]))
    with pytest.raises(ValueError, match="not a multiple of block_size"):
        pipeline.config(dict(ppl=dict(lengths=[1000])))
    with pytest.raises(ValueError, match="one value per curriculum length"):
        pipeline.config(dict(finetune=dict(steps=[1, 2])))
    with pytest.raises(ValueError, match="not a sparse pattern"):
        pipeline.config(dict(design_blocks=4, patterns=["sliding_window"]))


def test_run_stops_at_its_budget_resumes_and_gives_the_same_numbers(tmp_path, tok):
    params = copy.deepcopy(TINY)
    work = tmp_path / "run"
    first = pipeline.run(params, work, work / "artifacts", budget_s=0.0, progress=False)
    assert not first["complete"]
    done_after_first = sorted(p.name for p in (work / "artifacts").glob("*.json"))
    res = pipeline.run(params, work, work / "artifacts", progress=False)
    assert res["complete"], res
    cfg = pipeline.config(params)
    assert all(pipeline.done(work / "artifacts", u) for u in pipeline.unit_ids(cfg))
    assert set(done_after_first) <= {p.name for p in (work / "artifacts").glob("*.json")}
    run = accuracy.load_run(work / "artifacts")
    assert run.depth == 2 and len(run.provenance["calls"]) == 2
    for fn in (accuracy.table1_claims, accuracy.figure3_claims, accuracy.figure1b_claims):
        claims.validate(fn(run))
    # Same parameters, same numbers (CPU): a fresh run reproduces the perplexities and the training losses.
    other = tmp_path / "again"
    pipeline.run(params, other, other / "artifacts", progress=False)
    a, b = accuracy.load_run(work / "artifacts"), accuracy.load_run(other / "artifacts")
    assert a.get("ppl-cpt/power") == b.get("ppl-cpt/power")
    assert [h["loss"] for h in a.get("ft/power/s0")["history"]] == [h["loss"] for h in b.get("ft/power/s0")["history"]]


def test_positions_beyond_the_model_are_refused(tok):
    model, _ = load_pretrained("tiny-llama")
    with pytest.raises(ValueError, match="extend_positions"):
        pipeline.check_positions(model, 10 * model.config.max_position_embeddings)
    torch.manual_seed(0)
