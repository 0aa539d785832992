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

    # A private cache for this module, restored afterwards: notebook tests later in the same worker must
    # see the repository's cache (their kernels inherit this process's environment).
    before = os.environ.get("POWERATTN_CACHE")
    os.environ["POWERATTN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield load_pretrained("tiny-llama")[1]
    finally:
        if before is None:
            os.environ.pop("POWERATTN_CACHE", None)
        else:
            os.environ["POWERATTN_CACHE"] = before


def test_two_writers_of_one_unit_never_remove_each_others_file(tmp_path):
    """CI once failed with FileNotFoundError on `<unit>.tmp -> <unit>.json`: two processes wrote one unit through
    one shared temporary name. Each writer now has its own; the last complete file wins."""
    import threading

    errors = []

    def write(k):
        try:
            for i in range(300):
                pipeline._write_unit(tmp_path, "passkey/power/s0", dict(writer=k, i=i))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    assert [p.name for p in tmp_path.iterdir()] == ["passkey__power__s0.json"]  # no temporary left behind
    assert pipeline.load_artifacts(tmp_path)["passkey/power/s0"]["i"] == 299


def test_a_second_run_of_the_same_folder_waits_for_the_first(tmp_path):
    import threading

    order, logs = [], []
    with pipeline.run_lock(tmp_path):
        def second():
            with pipeline.run_lock(tmp_path, log=logs.append):
                order.append("second")

        t = threading.Thread(target=second)
        t.start()
        t.join(0.5)
        assert t.is_alive() and order == [], "the second run did not wait for the lock"
        order.append("first done")
    t.join(5)
    assert order == ["first done", "second"]
    assert logs and "another process is running this pipeline" in logs[0]


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


def test_ruler_units_after_lost_weights_retrain_only_the_continued_pretraining(tmp_path, tok):
    """A fresh machine has none of a run's weights: the RULER units retrain the continued pretraining under a new
    unit (cpt-again/<p>, the first record kept) and nothing of the passkey chain; same recipe, same losses on CPU."""
    params = copy.deepcopy(TINY)
    params.update(patterns=["power"], long=dict(seq_len=512, patterns=[], samples=2, rope_factor=2.0),
                  ruler=dict(enabled=True, lengths=[2048], n=2, tasks=["niah_single_1", "fwe"],
                             ft=dict(seq_len=2048, steps=1, batch=1, lr=1e-3, warmup=1), haystack_works=2,
                             batch_tokens=4096))
    work = tmp_path / "run"
    art = work / "artifacts"
    pipeline.run({**params, "ruler": {**params["ruler"], "enabled": False}}, work, art, progress=False)
    first_cpt = accuracy.load_run(art).get("cpt/power")
    for f in work.glob("*.pt"):  # the machine went back
        f.unlink()
    res = pipeline.run(params, work, art, progress=False)
    assert res["complete"]
    assert set(res["status"]) == {"cpt-again/power", "ruler-ft/power/s0", "ruler/power/s0"}
    run = accuracy.load_run(art)
    assert run.get("cpt/power") == first_cpt
    assert [h["loss"] for h in run.get("cpt-again/power")["history"]] == [h["loss"] for h in first_cpt["history"]]
    recs = run.get("ruler/power/s0")["records"]
    assert sorted({(r["task"], r["seq_len"]) for r in recs}) == [("fwe", 2048), ("niah_single_1", 2048)]
    assert all(0.0 <= r["score"] <= 1.0 for r in recs)


def test_probe_fitter_takes_features_saved_while_it_fits(tmp_path, monkeypatch):
    """The background fitter must not stop with features that appeared during its last fit (session 3 lost the
    untrained PowerAttention fit that way)."""
    from lib import probing

    work, art = tmp_path / "work", tmp_path / "art"
    work.mkdir()
    art.mkdir()

    def save(name):
        np.save(work / f"probe-{name}.features.npy", np.zeros((6, 2, 2, 3), dtype=np.float16))
        np.save(work / f"probe-{name}.labels.npy", np.arange(6) % 2)

    save("full-untrained")
    calls = []

    def fake_fit(x, y, folds, n_jobs, progress):
        calls.append(x.shape)
        if len(calls) == 1:
            save("power-untrained")  # the GPU saves the next model's features meanwhile
        return np.full(x.shape[1:3], 0.5)

    monkeypatch.setattr(probing, "probe_accuracy", fake_fit)
    fitted = pipeline.fit_probes(work, art, folds=2, n_jobs=1)
    assert sorted(fitted) == ["probefit/full/untrained", "probefit/power/untrained"]


def test_untrained_probe_features_lost_before_their_fit_are_extracted_again(tmp_path, tok):
    """Session 3 extracted the untrained PowerAttention features on a machine that went back before their fit: a
    later run must extract them again (unit probe-again/...) and fit them, not skip the unit as done."""
    params = copy.deepcopy(TINY)
    params.update(patterns=["power"], train=False,
                  probing=dict(enabled=True, seq_len=2048, n=12, untrained=["power"], trained=[], folds=2, jobs=1,
                               batch_size=4))
    work = tmp_path / "run"
    art = work / "artifacts"
    assert pipeline.run(params, work, art, progress=False)["complete"]
    fit = accuracy.load_run(art).get("probefit/power/untrained")
    (art / "probefit__power__untrained.json").unlink()
    for f in work.glob("probe-power-untrained.*"):
        f.unlink()
    res = pipeline.run(params, work, art, progress=False)
    assert res["complete"] and "probe-again/power/untrained" in res["status"]
    assert accuracy.load_run(art).get("probefit/power/untrained") == fit  # same features, same probes (CPU)
