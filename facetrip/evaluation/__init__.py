"""Evaluation: verification, kNN retrieval, pair protocols, the embedding loop, the report."""
