"""Evaluation: metrics (:mod:`.metrics`), alignment (:mod:`.align`), baselines (:mod:`.baselines`) and the harness
(:mod:`.harness`, ``evaluate(method, data_dir, out_dir)``)."""
