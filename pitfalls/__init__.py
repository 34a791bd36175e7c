"""pitfalls: ablation studies of end-to-end video training."""
