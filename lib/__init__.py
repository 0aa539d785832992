"""PowerAttention replication: masks, receptive-field theory, data, models, training.

Sub-packages and modules:
    lib.masks            the six attention patterns of the paper (Algorithms 1-5)
    lib.receptive_field  the DAG view of Section 3.1 and Appendix A
    lib.provenance       commit / device / versions stamped on every output
"""
