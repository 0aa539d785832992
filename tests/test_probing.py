"""Information-flow probing (Section 4.6 / Appendix C): the task, pooling, probes, analysis.

Everything runs on CPU in seconds with no downloads: the tokenizer is a tiny
byte-level BPE trained here on generated sentences, the model a 2-layer random
LlamaForCausalLM.
"""
import re

import numpy as np
import pytest
import torch

from lib.data import probing as task_mod
from lib.data.probing import PASSKEY_WORDS, QUESTION, probing_task
from lib import probing as P


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(0)
    words = task_mod.ADJECTIVES + task_mod.NOUNS + task_mod.VERBS
    corpus = [task_mod.INTRO, QUESTION, "The pass key is apple. Remember it. apple is the pass key."]
    corpus += [" ".join(rng.choice(words, size=12)) + "." for _ in range(300)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def _enc(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------------------------------- the task

def test_task_layout(tokenizer):
    d = probing_task(tokenizer, seq_len=512, block_size=32, n=24, seed=3)
    ids, labels = d["input_ids"], d["labels"]
    assert ids.dtype == torch.int64 and ids.shape == (24, 512)
    assert np.bincount(labels, minlength=6).tolist() == [4] * 6
    assert d["words"] == PASSKEY_WORDS and d["n_blocks"] == 16
    # the question ends every row
    q = _enc(tokenizer, QUESTION)
    assert d["question_start"] == 512 - len(q)
    assert (ids[:, -len(q):] == torch.tensor(q)).all()
    # the needle starts at the same token everywhere, about 10% in, and holds the right word twice
    s, pp = d["needle_start"], d["passkey_position"]
    head = _enc(tokenizer, " The pass key is")
    assert pp == s + len(head) and d["needle_block"] == pp // 32
    assert abs(s - 51) < 32
    for row, lab in zip(ids.tolist(), labels):
        w = _enc(tokenizer, " " + PASSKEY_WORDS[lab])
        assert row[s:pp] == head and row[pp:pp + len(w)] == w
        text = tokenizer.decode(row)
        word = PASSKEY_WORDS[lab]
        assert text.startswith(task_mod.INTRO + "The ")
        assert f". The pass key is {word}. Remember it. {word} is the pass key. The " in text
        assert text.endswith(".\n\nWhat is the pass key? The pass key is")
        # the whole needle (both copies of the word) sits in the needle block
        needle = _enc(tokenizer, f" The pass key is {word}. Remember it. {word} is the pass key.")
        assert row[s:s + len(needle)] == needle
        assert (s + len(needle) - 1) // 32 == d["needle_block"] == s // 32
        # filler: template sentences only
        filler = text[len(task_mod.INTRO):].split(" The pass key is")[0] + " " + text.split("is the pass key. ")[1]
        sentences = [x for x in re.split(r"(?<=\.)\s+", filler.split("\n\n")[0]) if x]
        assert all(re.fullmatch(r"The( [a-z]+){3,6}\.", x) for x in sentences), sentences[:5]
        assert not any(w in filler.split() for w in PASSKEY_WORDS)


def test_task_fillers_differ_and_seed(tokenizer):
    kw = dict(seq_len=256, block_size=16, n=12, passkey_depth=0.3)
    a, b, c = probing_task(tokenizer, seed=0, **kw), probing_task(tokenizer, seed=0, **kw), probing_task(tokenizer, seed=1, **kw)
    assert torch.equal(a["input_ids"], b["input_ids"]) and np.array_equal(a["labels"], b["labels"])
    assert not torch.equal(a["input_ids"], c["input_ids"])
    assert len({tuple(r) for r in a["input_ids"][:, :a["needle_start"]].tolist()}) == 12  # filler per sample


def test_task_words_of_different_lengths(tokenizer):
    words = ("apple", "xylophonequartzjumble")
    lens = [len(_enc(tokenizer, " " + w)) for w in words]
    assert lens[0] != lens[1]
    d = probing_task(tokenizer, seq_len=320, block_size=64, n=6, words=words, passkey_depth=0.3,
                     return_texts=True)
    assert d["input_ids"].shape == (6, 320) and len(d["texts"]) == 6
    pp = d["passkey_position"]
    for row, lab in zip(d["input_ids"].tolist(), d["labels"]):
        w = _enc(tokenizer, " " + words[lab])
        assert row[pp:pp + len(w)] == w


def test_filler_exact_lengths(tokenizer):
    f = task_mod._Filler(tokenizer)
    rng = np.random.default_rng(0)
    for budget in list(range(f.min_len, 3 * f.max_len)) + [500, 777]:
        for first in (False, True):
            if f.feasible(budget, first):
                assert len(f.fill(budget, rng, first)) == budget
    assert not f.feasible(f.min_len - 1, False)
    with pytest.raises(ValueError, match="cannot fill"):
        f.fill(f.min_len - 1, rng, False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=7), "multiple of 6"),
    (dict(n=0), "n must be"),
    (dict(seq_len=40, block_size=8), "too short"),
    (dict(seq_len=500, block_size=64), "multiple of block_size"),
    (dict(passkey_depth=0.0), r"\(0, 1\)"),
    (dict(passkey_depth=1.0), r"\(0, 1\)"),
    (dict(passkey_depth=-0.2), r"\(0, 1\)"),
    (dict(passkey_depth=0.01), "depth"),
    (dict(passkey_depth=0.99), "depth"),
    (dict(words=("apple", "apple")), "distinct"),
])
def test_task_errors(tokenizer, kwargs, match):
    args = dict(seq_len=256, block_size=16, n=6, passkey_depth=0.3)
    probing_task(tokenizer, **args)  # valid as it stands
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        probing_task(tokenizer, **args)


# --------------------------------------------------------------------------------------------------- pooling

@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def test_pooled_hidden_states_manual(tiny_llama, tmp_path):
    ids = torch.randint(0, 64, (5, 48), generator=torch.Generator().manual_seed(0))
    tiny_llama.train()
    f16 = P.pooled_hidden_states(tiny_llama, ids, 16, batch_size=2, progress=False)
    f32 = P.pooled_hidden_states(tiny_llama, ids, 16, batch_size=3, dtype=torch.float32, progress=False)
    assert tiny_llama.training  # mode restored
    assert f16.shape == (5, 3, 3, 32) and f16.dtype == np.float16 and f32.dtype == np.float32
    tiny_llama.eval()
    with torch.no_grad():
        hs = tiny_llama(input_ids=ids, output_hidden_states=True).hidden_states
        emb = tiny_llama.model.embed_tokens(ids)
    manual = np.zeros((5, 3, 3, 32))
    for i in range(5):
        for l in range(3):
            for b in range(3):
                manual[i, l, b] = hs[l][i, 16 * b:16 * (b + 1)].double().mean(0).numpy()
    np.testing.assert_allclose(f32, manual, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f16, manual, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(f32[:, 0, 1], emb[:, 16:32].mean(1).numpy(), rtol=1e-5, atol=1e-6)
    sub = P.pooled_hidden_states(tiny_llama, ids, 16, batch_size=5, dtype=torch.float32, layers=[2, 0],
                                 progress=False)
    np.testing.assert_allclose(sub, f32[:, [2, 0]], rtol=1e-5, atol=1e-6)
    out = np.lib.format.open_memmap(tmp_path / "feats.npy", mode="w+", dtype=np.float32, shape=(5, 3, 3, 32))
    P.pooled_hidden_states(tiny_llama, ids, 16, dtype=torch.float32, out=out, progress=False)
    np.testing.assert_allclose(np.asarray(out), f32, rtol=1e-5, atol=1e-6)


def test_pooled_hidden_states_errors(tiny_llama):
    ids = torch.zeros(2, 40, dtype=torch.long)
    with pytest.raises(ValueError, match="multiple of block_size"):
        P.pooled_hidden_states(tiny_llama, ids, 16, progress=False)
    with pytest.raises(ValueError, match="integer tensor"):
        P.pooled_hidden_states(tiny_llama, torch.zeros(2, 32), 16, progress=False)
    with pytest.raises(ValueError, match="invalid"):
        P.pooled_hidden_states(tiny_llama, ids[:, :32], 16, layers=[5], progress=False)
    with pytest.raises(ValueError, match="dtype"):
        P.pooled_hidden_states(tiny_llama, ids[:, :32], 16, dtype=torch.bfloat16, progress=False)
    with pytest.raises(ValueError, match="out has shape"):
        P.pooled_hidden_states(tiny_llama, ids[:, :32], 16, out=np.zeros((2, 3, 3, 32), np.float16), progress=False)


def test_pooled_hidden_states_clips_float16():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(1e7)
    ids = torch.arange(16).reshape(2, 8)
    with pytest.warns(RuntimeWarning, match="float16"):
        f = P.pooled_hidden_states(model, ids, 4, progress=False)
    assert np.isfinite(f).all() and np.abs(f).max() == np.finfo(np.float16).max


# --------------------------------------------------------------------------------------------------- probes

def _synthetic(n=120, layers=2, blocks=3, hidden=8, signal=((0, 1), (1, 2)), seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(6), n // 6)
    rng.shuffle(y)
    x = rng.normal(size=(n, layers, blocks, hidden))
    means = rng.normal(size=(6, hidden)) * 4
    for l, b in signal:
        x[:, l, b] += means[y]
    return x.astype(np.float16), y


def test_probe_accuracy_signal_vs_noise():
    x, y = _synthetic()
    acc = P.probe_accuracy(x, y, folds=4, n_jobs=1, progress=False)
    assert acc.shape == (2, 3)
    signal = np.zeros((2, 3), bool)
    signal[0, 1] = signal[1, 2] = True
    assert (acc[signal] >= 0.9).all(), acc
    assert (acc[~signal] <= 0.4).all(), acc
    assert np.array_equal(acc, P.probe_accuracy(x, y, folds=4, n_jobs=1, progress=False))


def test_probe_accuracy_parallel_and_pca_match():
    x, y = _synthetic(layers=1, blocks=4, signal=((0, 0), (0, 3)))
    serial = P.probe_accuracy(x, y, folds=3, n_jobs=1, progress=False)
    parallel = P.probe_accuracy(x, y, folds=3, n_jobs=2, progress=False)
    np.testing.assert_array_equal(serial, parallel)
    pca = P.probe_accuracy(x, y, folds=3, n_jobs=1, pca=4, progress=False)
    assert pca[0, 0] >= 0.8 and pca[0, 3] >= 0.8 and pca[0, 1] <= 0.4


def test_probe_accuracy_errors():
    x, y = _synthetic()
    with pytest.raises(ValueError, match="features must be"):
        P.probe_accuracy(x[:, 0], y, progress=False)
    with pytest.raises(ValueError, match="labels must have shape"):
        P.probe_accuracy(x, y[:-1], progress=False)
    with pytest.raises(ValueError, match="folds"):
        P.probe_accuracy(x, y, folds=1, progress=False)
    with pytest.raises(ValueError, match="class counts"):
        P.probe_accuracy(x[:10], y[:10], folds=5, progress=False)


# --------------------------------------------------------------------------------------------------- analysis

def _spread_grid(reached, n_layers):
    """acc = 1 where ``reached(layer)`` holds (bool [blocks]), chance elsewhere."""
    return np.stack([np.where(reached(l), 1.0, P.CHANCE) for l in range(n_layers)])


def test_frontier_and_linear_growth():
    nb, B = 6, 64
    d = np.arange(B) - nb
    acc = _spread_grid(lambda l: (d >= 0) & (d <= 8 * l), 12)  # sliding window: 8 blocks per layer
    front = P.frontier(acc, nb)
    assert front.tolist() == [min(nb + 8 * l, B - 1) for l in range(12)]
    fit = P.linear_growth_fit(front, n_blocks=B)
    assert fit["layers"] == list(range(8))  # stops before the first saturated layer (8: 6 + 64 capped at 63)
    assert fit["slope"] == pytest.approx(8.0, rel=0.05) and fit["r2"] > 0.99 and fit["linear"]
    assert P.final_accuracy(acc) == 1.0
    assert P.frontier(np.full((3, 10), 0.1), 2).tolist() == [-1, -1, -1]
    assert not P.linear_growth_fit([-1, -1, 5])["linear"]
    with pytest.raises(ValueError, match="needle_block"):
        P.frontier(acc, 64)


def test_hop_distances_follow_reversed_edges():
    layout = P.power_layout(64)
    hops = P.hop_distances(layout, 6)
    assert (hops[:6] == -1).all() and hops[6] == 0
    assert hops[6 + 1] == hops[6 + 4] == hops[6 + 8] == hops[6 + 32] == 1
    assert hops[6 + 5] == 2 and hops[6 + 7] == 2  # 4 + 1, 4 + 3
    assert hops[6 + 16 + 4] == 2 and hops[6 + 16 + 8 + 2] == 3 and hops[6 + 16 + 8 + 4 + 3] == 4


def test_power_jumps_power_vs_sliding():
    nb, B, L = 6, 64, 10
    hops = P.hop_distances(P.power_layout(B), nb)
    power = _spread_grid(lambda l: (hops >= 0) & (hops <= l), L)
    r = P.power_jumps(power, nb)
    assert r["jumps"] and r["rho"] > 0.9 and r["max_gap"] > 0.5 and r["max_gap_layer"] == 1
    assert r["powers"] == [8, 16, 32] and r["n_never"] == 0
    assert (r["first_layer"][nb + 1:] == hops[nb + 1:]).all()
    d = np.arange(B) - nb
    sliding = _spread_grid(lambda l: (d >= 0) & (d <= 8 * l), L)
    s = P.power_jumps(sliding, nb)
    assert not s["jumps"] and s["max_gap"] <= 0
    noise = np.random.default_rng(0).uniform(0.1, 0.25, size=(L, B))
    assert not P.power_jumps(noise, nb)["jumps"]


def test_plot_probe_heatmap():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = np.random.default_rng(0).uniform(size=(31, 64))
    fig, ax = plt.subplots()
    im = P.plot_probe_heatmap(ax, acc, "PowerAttention", needle_block=6)
    assert im.get_array().shape == (31, 64)
    assert any(t.get_text() == f"{acc[-1, -1]:.2f}" for t in ax.texts)
    plt.close(fig)


def test_figure5_claims_set_accuracy_differences_against_sampling_noise():
    """The final-accuracy claims give each difference with 2 SE over the probed samples and the chance level;
    the verdicts still follow the rules written before the run."""
    from lib import accuracy as A
    from lib import claims

    layers, blocks, n = 3, 8, 1200
    grid = lambda last: np.r_[np.full((layers, blocks), 1 / 6), [[1 / 6] * (blocks - 1) + [last]]]  # noqa: E731
    probe = dict(data=dict(needle_block=2, n=n, words=list(PASSKEY_WORDS)))
    units = {"_run/config": dict(cfg=dict(patterns=["power", "sliding_window"])),
             "probe/power/untrained": probe, "probe/sliding_window/untrained": probe}
    for (p, tag), last in {("power", "untrained"): 0.18, ("power", "trained"): 0.60,
                           ("sliding_window", "untrained"): 0.19, ("sliding_window", "trained"): 0.18}.items():
        units[f"probefit/{p}/{tag}"] = dict(data=dict(accuracy=grid(last).tolist()))
    out = {c["id"]: c for c in A.figure5_claims(A.Run(units))}
    claims.validate(list(out.values()))
    se = np.sqrt(0.18 * 0.82 / n + 0.19 * 0.81 / n)
    assert f"difference -0.01 ± {2 * se:.2f}, 2 SE over {n} probed samples" in out["P.untrained"]["ours"]
    assert "chance 0.17" in out["P.untrained"]["ours"]
    assert out["P.untrained"]["verdict"] == "not reproduced"  # the pre-registered rule: power > sliding window
    assert out["P.train_power"]["verdict"] == "reproduced" and "+0.42" in out["P.train_power"]["ours"]
    assert out["P.train_sw"]["verdict"] == "not reproduced"
