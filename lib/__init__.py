"""PowerAttention replication: masks, receptive-field theory, data, models, training, evaluation, reporting.

    lib.masks            the six attention patterns (Algorithms 1-5) and a general distance set, one file each;
                         section41_config (the paper's configurations); BlockLayout (block-sparse metadata)
    lib.receptive_field  the DAG view of Section 3.1 and Appendix A (B_k, alpha_hat_k, coverage)
    lib.theory           Theorem B.1 and the budget/sparsity arithmetic of Section 4.1
    lib.claims           the paper's statements beside ours, verdicts from a fixed vocabulary
    lib.paper_claims     the claims of the theory notebooks (01-03)
    lib.data             corpora (offline books, PG19), text streams, passkey, probing and RULER tasks
    lib.models           pretrained models: SmolLM2-135M from its GGUF wheel, hub names, position extension
    lib.train            the training loop (resumable, budgeted, memory-bounded)
    lib.pipeline         the accuracy pipeline: units, budgets, resumption, artifacts
    lib.evaluation       perplexity, passkey accuracy, experimental alpha_k
    lib.accuracy         tables and claims of Table 1, Figure 3, Figure 1b, Figures 5/7
    lib.probing          hidden-state probes (Section 4.6, Appendix C)
    lib.ruler_eval       the RULER-style benchmark with the hybrid layout (Table 2)
    lib.hf_attention     our block-sparse attention registered with transformers
    lib.latency          end-to-end prefill/decode latency of a Qwen2-7B-shaped model
    lib.pattern_search   is power-of-2 the best static pattern? (Section 3.1's objective)
    lib.explorer         the interactive pattern explorer (JupyterLab)
    lib.context_parallel_model   communication model of sequence parallelism at scale
    lib.stats            Wilson intervals, spread across seeds
    lib.plotting         shared plotting helpers
    lib.paths            cache folders
    lib.provenance       commit / code digest / device / versions stamped on every output
    lib.report           the replication report and the README status table, from the claims
"""
