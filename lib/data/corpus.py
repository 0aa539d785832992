"""Text sources beside the offline book corpus (``lib.data.books``).

* ``pg19``: the paper's perplexity corpus, through ``datasets`` (needs the Hugging Face hub), or from local
  files with the same ``text`` column. ``lib.pipeline`` uses it with ``corpus: {name: pg19}`` on machines that
  reach the hub (train split for continued pretraining, test split held out).
* ``synthetic``: generated English-like sentences, for CI and tests.
"""
from __future__ import annotations

import numpy as np

PG19_HUB_NAME = "deepmind/pg19"


def load_pg19(split: str = "train", max_books: int | None = None, data_files=None, streaming: bool = True) -> list[str]:
    """PG19 book texts through ``datasets``.

    With ``data_files`` (json/jsonl/parquet files with a ``text`` column, the
    PG19 schema) it reads local files; otherwise it streams ``deepmind/pg19``
    from the hub, which only hub-connected machines can do.
    """
    import datasets

    if data_files is not None:
        files = [str(f) for f in (data_files if isinstance(data_files, (list, tuple)) else [data_files])]
        fmt = "parquet" if files[0].endswith(".parquet") else "json"
        ds = datasets.load_dataset(fmt, data_files=files, split="train", streaming=False)
    else:
        ds = datasets.load_dataset(PG19_HUB_NAME, split=split, streaming=streaming)
    if ds.column_names is not None and "text" not in ds.column_names:
        raise ValueError(f"PG19 data needs a 'text' column, got {ds.column_names}")
    books = []
    for row in ds:
        books.append(row["text"])
        if max_books is not None and len(books) >= max_books:
            break
    return books


_SUBJECTS = ["The old king", "A young sailor", "The quiet city", "My brother", "The grey wolf", "Her mother",
             "The farmer", "A small boat", "The wise judge", "Our neighbour"]
_VERBS = ["walked along", "looked at", "thought about", "spoke of", "carried", "remembered", "followed",
          "waited for", "built", "sold"]
_OBJECTS = ["the long road", "a golden cup", "the winter sea", "an old letter", "the bright morning",
            "a broken wheel", "the silent hall", "the green hills", "a heavy stone", "the evening bell"]
_ENDINGS = [".", ", and then rested.", " before the night came.", " with great care.", " once again."]


def synthetic_corpus(n_docs: int = 8, sentences_per_doc: int = 400, seed: int = 0) -> list[str]:
    """Generated English-like documents (for CI and tests; no download)."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        words = [
            f"{_SUBJECTS[rng.integers(10)]} {_VERBS[rng.integers(10)]} {_OBJECTS[rng.integers(10)]}"
            f"{_ENDINGS[rng.integers(5)]}"
            for _ in range(sentences_per_doc)
        ]
        docs.append(" ".join(words))
    return docs


def load_corpus(name: str, max_docs: int | None = None, seed: int = 0, data_files=None, split: str = "train") -> list[str]:
    """Documents of corpus ``name``: "pg19" (``split``) or "synthetic"."""
    if name == "pg19":
        return load_pg19(split=split, max_books=max_docs, data_files=data_files)
    if name == "synthetic":
        return synthetic_corpus(n_docs=max_docs or 8, seed=seed)
    raise ValueError(f"unknown corpus {name!r}; expected 'pg19' or 'synthetic' (the offline books: lib.data.books)")
