"""lib.data.corpus: the PG19 loader on local files (the hub path needs a network) and the synthetic corpus."""
import json

import pytest

from lib.data.corpus import load_corpus, load_pg19, synthetic_corpus
from lib.pipeline import corpus_split


def test_load_pg19_from_local_files_and_the_pipeline_split(tmp_path):
    books = [{"text": f"Book {i}. " + "word " * 50} for i in range(4)]
    f = tmp_path / "pg19.jsonl"
    f.write_text("\n".join(json.dumps(b) for b in books))
    assert load_pg19(data_files=f) == [b["text"] for b in books]
    assert load_pg19(data_files=[f], max_books=2) == [b["text"] for b in books[:2]]
    train, heldout = corpus_split(dict(name="pg19", path=str(f), max_train_works=3, max_heldout_works=1))
    assert train == [b["text"] for b in books[:3]] and heldout == [books[0]["text"]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "x"}))
    with pytest.raises(ValueError, match="'text' column"):
        load_pg19(data_files=bad)


def test_synthetic_and_dispatch():
    docs = synthetic_corpus(n_docs=3, sentences_per_doc=10, seed=1)
    assert len(docs) == 3 and docs == synthetic_corpus(n_docs=3, sentences_per_doc=10, seed=1)
    assert load_corpus("synthetic", max_docs=2) == synthetic_corpus(n_docs=2)
    with pytest.raises(ValueError, match="unknown corpus"):
        load_corpus("shakespeare")
