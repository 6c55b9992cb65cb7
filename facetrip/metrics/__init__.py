"""Pure metric functions and the embedding loop they score, below both training and
evaluation (as open-metric-learning keeps ``functional/`` apart from its engines):
verification (k-fold / calibrated, ROC, AUC, TAR@FAR), exact kNN and retrieval, LFW pair
files and seeded pairs, the embedding loop. Nothing here reads a config or a checkpoint."""
