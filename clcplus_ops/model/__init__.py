"""Training side: sample DB, time-series extraction, TempCNN, label audit, evaluation, model registry."""
