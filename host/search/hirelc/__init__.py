"""HiReLC: the hierarchical ensemble controller (high-level agents allocate per-block budgets,
low-level agents choose each block's per-kernel actions), with Fisher sensitivity and a surrogate
of accuracy learnt over active-learning cycles. `docs/architecture.md` maps the paper onto the code."""
