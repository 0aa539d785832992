"""lib.data.ruler: RULER-style prompts at exact token lengths, scoring, training batches.

The tests build their own byte-level BPE (the GPT-2 pre-tokenizer after an individual-digits
split, as SmolLM2's tokenizer), trained in a fraction of a second on generated text, so they
need no model files.
"""
from __future__ import annotations

import collections
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.data import ruler as R

# ----------------------------------------------------------------------------------------------
# Fixtures: a small tokenizer, a haystack, QA records
# ----------------------------------------------------------------------------------------------


def _train_tokenizer(pre_tokenizer=None, decoder=None, vocab_size=1200):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizer or pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tk.decoder = decoder or decoders.ByteLevel()
    texts = (R.fallback_essays(2, 300, seed=99) + [R.NOISE] * 50 + [" ".join(R.default_words())] * 3
             + [" ".join(_ESSAY_WORDS)] * 3)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tk.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk)


_ESSAY_WORDS = ("When in the course of human events it becomes necessary for one people to dissolve the "
                "political bands which have connected them with another and to assume among the powers of "
                "the earth the separate and equal station to which the laws of nature entitle them").split()


def _essay(seed: int, n_sent: int = 900) -> str:
    """English-like text unlike the fallback essays (a distinct vocabulary), with paragraphs."""
    rng = np.random.default_rng(seed)
    sents = []
    for _ in range(n_sent):
        k = int(rng.integers(5, 14))
        words = [_ESSAY_WORDS[int(i)] for i in rng.integers(0, len(_ESSAY_WORDS), size=k)]
        sents.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?"]))
    return "\n\n".join(" ".join(sents[i:i + 7]) for i in range(0, len(sents), 7))


@pytest.fixture(scope="module")
def tok():
    return _train_tokenizer()


@pytest.fixture(scope="module")
def haystack():
    return [_essay(1), _essay(2)]


def _squad_rows(n=240):
    rows = []
    for i in range(n):
        title = f"Topic{i // 3}"
        context = (f"The archive of {title} lists item {i}. Its keeper was named Keeper{i} in the old records. "
                   + " ".join([R.NOISE] * (1 + i % 4)))
        rows.append({"id": str(i), "title": title, "context": context, "question": f"Who kept item {i}?",
                     "answers": {"text": [f"Keeper{i}", f"Keeper{i}"], "answer_start": [0, 0]}})
    return rows


def _hotpot_rows(n=40):
    rows = []
    for i in range(n):
        titles = [f"Place{i}A", f"Place{i}B"] + [f"Other{i}_{j}" for j in range(4)]
        sentences = [[f"Place{i}A is a town near the river.", f" It was founded by Founder{i}."],
                     [f"Place{i}B is a village.", f" It lies north of Place{i}A."]]
        sentences += [[f"Other{i}_{j} is a hill.", " " + R.NOISE] for j in range(4)]
        rows.append({"question": f"Who founded the town south of Place{i}B?", "answer": f"Founder{i}",
                     "context": {"title": titles, "sentences": sentences},
                     "supporting_facts": {"title": [f"Place{i}A", f"Place{i}B"], "sent_id": [1, 0]}})
    return rows


@pytest.fixture(scope="module")
def qa():
    return {"qa_1": _squad_rows(), "qa_2": _hotpot_rows()}


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------


def test_task_lists():
    assert len(R.TASKS) == 13 and len(set(R.TASKS)) == 13
    assert sorted(t for c in R.CATEGORIES.values() for t in c) == sorted(R.TASKS)
    assert R.CATEGORIES["NIAH"] == R.TASKS[:8] and R.CATEGORIES["Aggregation"] == ("cwe", "fwe")
    assert set(R.MAX_NEW_TOKENS) == set(R.TASKS) == set(R.RULER_MAX_NEW_TOKENS)
    # Smaller than RULER's budgets, except VT, whose 30 barely holds five variables with this tokenizer.
    assert all(0 < R.MAX_NEW_TOKENS[t] <= R.RULER_MAX_NEW_TOKENS[t] for t in R.TASKS if t != "vt")
    assert len(R.default_words()) > 500 and len(set(R.default_words())) == len(R.default_words())


# ----------------------------------------------------------------------------------------------
# Exact lengths, round trips, answers in place
# ----------------------------------------------------------------------------------------------


def _check_sample(tok, x, task, seq_len):
    ids = x["input_ids"]
    assert x["task"] == task and x["seq_len"] == seq_len
    assert len(ids) == seq_len - R.MAX_NEW_TOKENS[task] == len(ids)
    assert x["max_new_tokens"] == R.MAX_NEW_TOKENS[task]
    # The text re-tokenizes to exactly the ids, and prompt + target to ids + target ids.
    assert _ids(tok, x["input"]) == ids
    assert _ids(tok, x["target"]) == x["target_ids"]
    assert _ids(tok, x["input"] + x["target"]) == ids + x["target_ids"]
    assert x["target"].startswith(" ") and not x["input"].endswith(" ")
    assert R.score(x["target"], x["answers"], task) == 1.0
    text = x["input"]
    if task in ("qa_1", "qa_2"):
        assert any(a in text for a in x["answers"])
    else:
        for a in x["answers"]:
            assert a in text, (task, a)
    # answer_pos points at the needle / assignment / gold document that holds each answer.
    for a, pos in zip(x["answers"], x["answer_pos"]):
        window = tok.decode(ids[pos:pos + 120])
        if task.startswith("niah"):
            assert window.lstrip().startswith("One of the special magic") and a in window.split(".")[0]
        elif task == "vt":
            assert window.lstrip().startswith(f"VAR {a} =")
    if task in ("qa_1", "qa_2"):
        heads = [tok.decode(ids[p:p + 8]).lstrip() for p in x["answer_pos"]]
        assert heads and all(h.startswith("Document") for h in heads)


@pytest.mark.parametrize("task", R.TASKS)
@pytest.mark.parametrize("seq_len", [1024, 2048])
def test_exact_length_round_trip_and_answers(tok, haystack, qa, task, seq_len):
    samples = R.generate(task, tok, seq_len, 3, seed=0, haystack=haystack, qa_source=qa, verify=True)
    assert [x["index"] for x in samples] == [0, 1, 2]
    for x in samples:
        _check_sample(tok, x, task, seq_len)


@pytest.mark.parametrize("task", ["niah_single_1", "niah_multikey_2", "niah_multikey_3", "niah_multiquery", "vt",
                                  "cwe", "fwe", "qa_1"])
def test_exact_length_long(tok, haystack, qa, task):
    for seq_len in (4096, 8192):
        (x,) = R.generate(task, tok, seq_len, 1, seed=5, haystack=haystack, qa_source=qa, verify=True)
        _check_sample(tok, x, task, seq_len)


@settings(max_examples=12, deadline=None)
@given(seq_len=st.integers(1000, 3000), task=st.sampled_from(["niah_single_2", "niah_multikey_2", "vt", "cwe", "fwe"]),
       seed=st.integers(0, 2 ** 31))
def test_exact_length_any_length(tok, seq_len, task, seed):
    (x,) = R.generate(task, tok, seq_len, 1, seed=seed, verify=True)
    assert len(x["input_ids"]) == seq_len - R.MAX_NEW_TOKENS[task]


def test_works_with_smollm2_like_tokenizer_without_digit_split():
    """The GGUF SmolLM2 tokenizer has the plain GPT-2 ByteLevel pre-tokenizer (no Digits step)."""
    from tokenizers import pre_tokenizers

    tok2 = _train_tokenizer(pre_tokenizer=pre_tokenizers.ByteLevel(add_prefix_space=False))
    for task in ("niah_single_1", "niah_multikey_3", "cwe"):
        (x,) = R.generate(task, tok2, 1024, 1, seed=1, verify=True)
        assert len(x["input_ids"]) == 1024 - R.MAX_NEW_TOKENS[task]


def test_incompatible_tokenizer_is_caught():
    """Llama-3's pre-tokenizer glues punctuation to following newlines (".\n"), so pieces
    tokenized apart differ from the joined text: the check on the first sample says so."""
    from tokenizers import Regex, pre_tokenizers

    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok2 = _train_tokenizer(pre_tokenizer=pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(llama3), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
    with pytest.raises(RuntimeError, match="re-tokenizes"):
        R.generate("niah_multikey_2", tok2, 1024, 1, seed=0)


# ----------------------------------------------------------------------------------------------
# Task contents
# ----------------------------------------------------------------------------------------------


def _needles(text):
    return re.findall(r"One of the special magic (?:numbers|uuids) for (\S+) is: (\S+)\.(?=\s)", text)


UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def test_niah_structure(tok, haystack):
    def one(task):
        return R.generate(task, tok, 2048, 1, seed=3, haystack=haystack)[0]

    x = one("niah_single_1")
    needles = _needles(x["input"])
    assert len(needles) == 1 and re.fullmatch(r"[1-9]\d{6}", x["answers"][0])
    assert needles[0][1] == x["answers"][0] and x["input"].count(R.NOISE) > 20
    assert x["input"].startswith("A special magic number is hidden")
    assert x["input"].endswith(f"The special magic number for {needles[0][0]} mentioned in the provided text is")

    x = one("niah_single_2")
    assert len(_needles(x["input"])) == 1 and R.NOISE not in x["input"]
    assert sum(w in x["input"] for w in ("dissolve", "necessary", "political", "separate")) >= 2

    x = one("niah_single_3")
    (k, v), = _needles(x["input"])
    assert re.fullmatch(UUID, v) and x["answers"] == [v] and "-" in k and "magic uuid" in x["input"]

    x = one("niah_multikey_1")
    needles = _needles(x["input"])
    assert len(needles) == 4 and len({k for k, _ in needles}) == 4
    asked = [k for k, v in needles if v == x["answers"][0]]
    assert len(asked) == 1 and x["input"].endswith(f"for {asked[0]} mentioned in the provided text is")

    x = one("niah_multikey_2")
    needles = _needles(x["input"])
    assert len(needles) > 40 and len({k for k, _ in needles}) == len(needles)  # all keys distinct
    assert [v for _, v in needles].count(x["answers"][0]) == 1
    body = x["input"].split("afterwards.\n", 1)[1].rsplit("\nWhat is", 1)[0]
    assert all(line.startswith("One of the special magic numbers for ") for line in body.split("\n"))

    x = one("niah_multikey_3")
    needles = _needles(x["input"])
    assert len(needles) > 10 and all(re.fullmatch(UUID, k) and re.fullmatch(UUID, v) for k, v in needles)

    x = one("niah_multivalue")
    needles = _needles(x["input"])
    assert len(needles) == 4 and len({k for k, _ in needles}) == 1
    assert sorted(v for _, v in needles) == sorted(x["answers"]) and len(set(x["answers"])) == 4
    assert x["input"].startswith("Some special magic numbers are hidden") and x["input"].endswith("text are")

    x = one("niah_multiquery")
    needles = dict(_needles(x["input"]))
    assert len(needles) == 4
    question = x["input"].rsplit("\nWhat are all the special magic numbers for ", 1)[1]
    keys = re.findall(r"[a-z]+-[a-z]+", question.split(" mentioned")[0])
    assert len(keys) == 4 and [needles[k] for k in keys] == x["answers"]


def test_needle_haystack_cuts_last_distractor_only_when_needed(tok):
    """90-token UUID needles cannot fill ~700 tokens whole: the last distractor is cut short."""
    ids, mask = R.training_batch(["niah_multikey_3"], tok, 1024, 3, seed=0, step=0)
    assert ids.shape == (3, 1024)
    cut = 0
    for r in range(3):
        text = tok.decode(ids[r][~mask[r]].tolist())
        body = text.split("afterwards.\n", 1)[1].rsplit("\nWhat is", 1)[0].split("\n")
        whole = [ln for ln in body if re.fullmatch(rf"One of the special magic uuids for {UUID} is: {UUID}\.", ln)]
        assert len(whole) >= len(body) - 1  # at most one cut line ...
        if len(whole) < len(body):
            assert body[-1] not in whole and body[-1].startswith("One of")  # ... and it is the last
            cut += 1
        assert tok.decode(ids[r][mask[r]].tolist()).strip() in text  # the asked needle is whole
    assert cut  # this small tokenizer's UUID needles (~92 tokens) need the cut here


def test_fill_units_exact():
    rng = np.random.default_rng(0)

    def draw(k):
        return [np.arange(int(n)) for n in rng.integers(20, 23, size=k)]  # lengths 20-22

    for budget in (0, 20, 63, 500, 1999):
        units, cut = R._fill_units(budget, draw, "test")
        assert sum(len(u) for u in units) == budget and not cut
    with pytest.raises(ValueError, match="could not fill"):
        R._fill_units(25, draw, "test")  # no sum of 20-22 is 25, and no cuts allowed


def test_niah_depths_spread(tok, haystack):
    """Needle positions cover the whole context across samples (RULER's 40 depths)."""
    xs = R.generate("niah_single_2", tok, 2048, 30, seed=11, haystack=haystack)
    depths = np.array([x["answer_pos"][0] / len(x["input_ids"]) for x in xs])
    assert depths.min() < 0.15 and depths.max() > 0.85


def test_vt_chain(tok):
    (x,) = R.generate("vt", tok, 2048, 1, seed=4)
    names = x["answers"]
    assert len(names) == R.VT_HOPS + 1 and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
    main = x["input"].split("\n\n" + "Memorize and track", 1)[1]  # after the one-shot example
    value = re.search(rf"VAR {names[0]} = (\d{{5}})\n", main).group(1)
    for a, b in zip(names, names[1:]):
        assert f"\nVAR {b} = VAR {a}\n" in main
    assert main.index(f"VAR {names[0]} =") < main.index(f"VAR {names[-1]} =")
    assert x["input"].endswith(f"5 variables are assigned the value {value}, they are:")
    assert x["target"] == " " + ", ".join(names)
    example = x["input"].split("\n\nMemorize", 1)[0]
    assert re.search(r"they are: [A-Z]{3}(, [A-Z]{3}){4}$", example)  # one-shot example with its answer


@pytest.mark.parametrize("seq_len,freq_cw,freq_ucw", [(2048, 6, 1), (4096, 30, 3)])
def test_cwe_counts(tok, seq_len, freq_cw, freq_ucw):
    (x,) = R.generate("cwe", tok, seq_len, 1, seed=2)
    main = x["input"].rsplit("Memorize the ones that appear most often.\n", 1)[1].split("\nQuestion:")[0]
    items = re.findall(r"(\d+)\. (\S+)", main)
    assert [int(i) for i, _ in items] == list(range(1, len(items) + 1))  # numbered 1..N
    counts = collections.Counter(w for _, w in items)
    assert len(x["answers"]) == 10 and all(counts[a] == freq_cw for a in x["answers"])
    rare = [c for w, c in counts.items() if w not in x["answers"]]
    assert rare and max(rare) <= freq_ucw < freq_cw
    assert sum(c == freq_ucw for c in rare) >= len(rare) // 2  # few words absorb the last tokens


def test_fwe_counts(tok):
    (x,) = R.generate("fwe", tok, 2048, 1, seed=6)
    text = x["input"].split("coded words. ", 1)[1].split("\nQuestion:")[0]
    counts = collections.Counter(text.split())
    assert counts.most_common(1)[0][0] == "..."
    ranked = [w for w, _ in counts.most_common() if w != "..."]
    assert set(ranked[:3]) == set(x["answers"]) and all(re.fullmatch(r"[a-z]{6}", a) for a in x["answers"])
    assert counts[ranked[2]] > counts[ranked[3]]


def test_qa_documents(tok, qa):
    for task, records in qa.items():
        xs = R.generate(task, tok, 2048, 4, seed=0, qa_source=records)
        questions = set()
        for x in xs:
            text = x["input"]
            nums = [int(n) for n in re.findall(r"\n\nDocument (\d+):", text)]
            assert nums == list(range(1, len(nums) + 1)) and len(nums) >= 5
            q = text.rsplit("Question: ", 1)[1]
            assert q.endswith(" Answer:")
            questions.add(q)
            assert text.startswith("Answer the question based on the given documents.")
        assert len(questions) == 4  # different records for different samples
    # HotpotQA: both supporting paragraphs are gold documents; answers from "answer".
    x = R.generate("qa_2", tok, 1024, 1, seed=1, qa_source=qa["qa_2"])[0]
    assert len(x["answer_pos"]) == 2 and x["answers"][0].startswith("Founder")


def test_qa_normalization():
    squad = R.normalize_qa_records(_squad_rows(6))
    assert squad[0]["answers"] == ["Keeper0"] and len(squad[0]["contexts"]) == 1
    assert len(squad[0]["distractors"]) == 2  # the other paragraphs of the same title
    hot = R.normalize_qa_records(_hotpot_rows(2))
    assert [d.split("\n")[0] for d in hot[0]["contexts"]] == ["Place0A", "Place0B"]
    assert len(hot[0]["distractors"]) == 4
    original = [{"question": "q?", "answer": "x", "context": [["T", ["x is here."]]],
                 "supporting_facts": [["T", 0]]}]
    assert R.normalize_qa_records(original)[0]["contexts"] == ["T\nx is here."]
    with pytest.raises(ValueError, match="no usable"):
        R.normalize_qa_records([{"question": "q", "answers": [], "contexts": ["c"]}])
    with pytest.raises(ValueError, match="question"):
        R.normalize_qa_records([{"context": "c"}])


def test_qa_unavailable_offline(tok, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'rajpurkar/squad' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(R.QAUnavailable, match="unavailable offline"):
        R.load_qa_source("squad")
    with pytest.raises(R.QAUnavailable):
        R.generate("qa_2", tok, 1024, 1, seed=0)  # no qa_source: tries the hub
    assert issubclass(R.QAUnavailable, RuntimeError)
    with pytest.raises(ValueError, match="unknown QA source"):
        R.load_qa_source("triviaqa")


def test_qa_source_from_local_files(tmp_path):
    import json

    path = tmp_path / "squad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _squad_rows(5)))
    recs = R.load_qa_source("qa_1", data_files=str(path))
    assert len(recs) == 5 and recs[2]["answers"] == ["Keeper2"]


# ----------------------------------------------------------------------------------------------
# Determinism, disjointness
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["niah_multikey_2", "niah_multivalue", "vt", "cwe", "fwe", "qa_1"])
def test_deterministic_by_seed(tok, haystack, qa, task):
    a = R.generate(task, tok, 1024, 3, seed=7, haystack=haystack, qa_source=qa)
    b = R.generate(task, tok, 1024, 3, seed=7, haystack=haystack, qa_source=qa)
    assert a == b
    assert R.generate(task, tok, 1024, 2, seed=7, haystack=haystack, qa_source=qa) == a[:2]  # prefix
    c = R.generate(task, tok, 1024, 3, seed=8, haystack=haystack, qa_source=qa)
    assert all(x["input_ids"] != y["input_ids"] for x, y in zip(a, c))
    assert len({tuple(x["input_ids"]) for x in a}) == 3  # samples differ from each other


def test_train_and_test_haystacks_stay_apart(tok):
    train_doc, test_doc = [_essay(10).replace("people", "TRAINWORD")], [_essay(20).replace("people", "TESTWORD")]
    (x,) = R.generate("niah_single_2", tok, 2048, 1, seed=0, haystack=test_doc)
    assert "TESTWORD" in x["input"] and "TRAINWORD" not in x["input"]
    ids, _ = R.training_batch(["niah_single_2"], tok, 2048, 2, seed=0, step=0, haystack=train_doc)
    text = tok.decode(ids[0].tolist())
    assert "TRAINWORD" in text and "TESTWORD" not in text


def test_training_rows_differ_from_test_samples(tok, haystack):
    tasks = ["niah_single_2", "vt", "cwe"]
    test = {tuple(x["input_ids"] + x["target_ids"]) for t in tasks for x in R.generate(t, tok, 1024, 4, seed=0,
                                                                                        haystack=haystack)}
    ids, _ = R.training_batch(tasks, tok, 1024, 6, seed=0, step=0, haystack=haystack)
    assert not {tuple(r.tolist()) for r in ids} & test


# ----------------------------------------------------------------------------------------------
# Training batches
# ----------------------------------------------------------------------------------------------


def test_training_batch(tok, haystack, qa):
    seq_len, batch = 1024, 8
    ids, mask = R.training_batch(list(R.TASKS), tok, seq_len, batch, seed=3, step=5, haystack=haystack,
                                 qa_source=qa)
    assert ids.shape == (batch, seq_len) and ids.dtype == torch.long
    assert mask.shape == (batch, seq_len) and mask.dtype == torch.bool
    for r in range(batch):
        m = mask[r].numpy()
        first = int(np.argmax(m))
        assert m[first:].all() and not m[:first].any() and 0 < m.sum() < 80  # answer tokens at the end
        target = tok.decode(ids[r, first:].tolist())
        prompt = tok.decode(ids[r, :first].tolist())
        assert target.startswith(" ") and _ids(tok, prompt + target) == ids[r].tolist()
    again, mask2 = R.training_batch(list(R.TASKS), tok, seq_len, batch, seed=3, step=5, haystack=haystack,
                                    qa_source=qa)
    assert torch.equal(ids, again) and torch.equal(mask, mask2)
    other, _ = R.training_batch(list(R.TASKS), tok, seq_len, batch, seed=3, step=6, haystack=haystack,
                                qa_source=qa)
    assert not torch.equal(ids, other)


def test_training_batch_answers_match_prompt(tok, haystack):
    ids, mask = R.training_batch(["niah_multiquery"], tok, 1536, 2, seed=0, step=0, haystack=haystack)
    for r in range(2):
        prompt = tok.decode(ids[r][~mask[r]].tolist())
        values = tok.decode(ids[r][mask[r]].tolist()).strip().split(", ")
        assert len(values) == 4 and all(f"is: {v}." in prompt for v in values)


def test_ruler_dataset(tok):
    ds = R.ruler_dataset("niah_single_1", tok, 1024, 3, seed=0)
    assert len(ds) == 3 and set(ds.column_names) >= {"task", "seq_len", "index", "input", "input_ids", "answers",
                                                     "target", "target_ids", "answer_pos", "max_new_tokens"}
    assert ds[1]["input_ids"] == R.generate("niah_single_1", tok, 1024, 3, seed=0)[1]["input_ids"]
    assert R.ruler_dataset("cwe", tok, 1024, 1, seed=0).features == ds.features  # same schema for every task


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


def test_score_string_match_all():
    assert R.score(" 1234567.", ["1234567"], "niah_single_1") == 1.0
    assert R.score("The number is 7654321", ["1234567"], "niah_single_1") == 0.0
    assert R.score("1111111, 2222222 and more", ["1111111", "2222222", "3333333", "4444444"], "niah_multivalue") == 0.5
    assert R.score("abcde FGHIJ", ["ABCDE", "fghij"], "vt") == 1.0  # case-insensitive
    assert R.score("0123456789", ["12345"], "vt") == 1.0  # substring, as RULER
    assert R.score("", ["x"], "cwe") == 0.0
    assert R.score("apple\x00pear", ["apple", "pear"], "cwe") == 1.0  # control characters dropped
    assert R.score("apple, apple, apple", ["apple", "pear", "plum"], "fwe") == pytest.approx(1 / 3)


def test_score_string_match_part():
    assert R.score("Denver Broncos", ["Denver Broncos", "Broncos", "Carolina"], "qa_1") == 1.0
    assert R.score("the broncos won", ["Denver Broncos", "Broncos"], "qa_2") == 1.0
    assert R.score("Carolina Panthers", ["Denver Broncos"], "qa_1") == 0.0


def test_score_errors():
    with pytest.raises(ValueError, match="unknown task"):
        R.score("x", ["x"], "niah")
    with pytest.raises(ValueError, match="non-empty"):
        R.score("x", [], "vt")
    with pytest.raises(ValueError, match="non-empty"):
        R.score("x", "x", "vt")
    with pytest.raises(ValueError, match="string"):
        R.score(None, ["x"], "vt")


@given(pred=st.text(max_size=40), answers=st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=5),
       task=st.sampled_from(R.TASKS))
def test_score_in_unit_interval(pred, answers, task):
    s = R.score(pred, answers, task)
    assert 0.0 <= s <= 1.0
    assert R.score(pred + " " + " ".join(answers), answers, task) >= s  # more text never scores lower


def test_category_scores():
    per_task = {t: 1.0 for t in R.CATEGORIES["NIAH"]} | {"vt": 0.5, "cwe": 0.2, "fwe": 0.4, "qa_1": 0.0, "qa_2": 1.0}
    cats = R.category_scores(per_task)
    assert cats["NIAH"] == 1.0 and cats["VT"] == 0.5 and cats["Aggregation"] == pytest.approx(0.3)
    assert cats["QA"] == 0.5 and cats["Avg."] == pytest.approx((8 + 0.5 + 0.2 + 0.4 + 0 + 1) / 13)
    partial = R.category_scores({"niah_single_1": 80.0, "vt": 40.0})  # any scale; only categories present
    assert partial == {"NIAH": 80.0, "VT": 40.0, "Avg.": 60.0}
    with pytest.raises(ValueError, match="unknown task"):
        R.category_scores({"passkey": 1.0})
    with pytest.raises(ValueError, match="empty"):
        R.category_scores({})


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_bad_input(tok, qa):
    with pytest.raises(ValueError, match="unknown task"):
        R.generate("niah_single_4", tok, 1024, 1, seed=0)
    with pytest.raises(ValueError, match="unknown task"):
        R.training_batch(["vt", "passkey"], tok, 1024, 1, seed=0, step=0)
    for task in R.TASKS:
        with pytest.raises(ValueError, match="too short"):
            R.generate(task, tok, 100, 1, seed=0, qa_source=qa)
    with pytest.raises(ValueError, match="too short"):
        R.generate("cwe", tok, 500, 1, seed=0)  # the one-shot example and 60 common items do not fit
    with pytest.raises(ValueError, match="too short"):
        R.training_batch(["niah_single_2"], tok, 120, 1, seed=0, step=0)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must be"):
            R.generate("vt", tok, 1024, bad, seed=0)
    with pytest.raises(ValueError, match="seq_len must be"):
        R.generate("vt", tok, "1024", 1, seed=0)
    with pytest.raises(ValueError, match="seed must be"):
        R.generate("vt", tok, 1024, 1, seed=-1)
    with pytest.raises(ValueError, match="batch_size must be"):
        R.training_batch(["vt"], tok, 1024, 0, seed=0, step=0)
    with pytest.raises(ValueError, match="haystack"):
        R.generate("niah_single_2", tok, 1024, 1, seed=0, haystack="just a string")
    with pytest.raises(ValueError, match="haystack"):
        R.generate("niah_single_2", tok, 1024, 1, seed=0, haystack=["", "  "])
    with pytest.raises(ValueError, match="words"):
        R.generate("cwe", tok, 1024, 1, seed=0, words=["a", "b"])


def test_custom_words(tok):
    words = [f"{w}ish" for w in R.NOUNS[:120]]
    (x,) = R.generate("cwe", tok, 2048, 1, seed=0, words=words)
    assert all(a in words for a in x["answers"])
    (y,) = R.generate("niah_single_2", tok, 1024, 1, seed=0, words=words)
    key = re.search(r"for (\S+) mentioned", y["input"]).group(1)
    assert all(part in words for part in key.split("-"))


def test_short_haystack_is_repeated(tok):
    (x,) = R.generate("niah_single_2", tok, 2048, 1, seed=0, haystack=["A short essay. It has two sentences!"])
    assert len(x["input_ids"]) == 2048 - R.MAX_NEW_TOKENS["niah_single_2"]
    assert x["input"].count("A short essay.") > 50
