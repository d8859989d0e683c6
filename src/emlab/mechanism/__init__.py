"""The mechanistic layer: persona directions, steering, ablation, screening, monitoring.

- :mod:`.hooks` — ``steer`` / ``ablate`` / ``record`` context managers on decoder layers;
- :mod:`.directions` — extraction (answers, contrastive prompts), safetensors + manifest;
- :mod:`.measure` — AUROC per layer, excess misalignment removed, Spearman, projections;
- :mod:`.screen` — projection difference of a dataset before training;
- :mod:`.monitor` — the probe set's projection during training;
- :mod:`.sweep` — scales x layers with a norm-matched random control.
"""
