"""Ray Tune driver, trials (in-process or Ray Train DDP), MLflow tracking."""
