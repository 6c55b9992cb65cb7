"""facetrip: triplet-loss face embeddings, end to end."""
__version__ = "0.1.0"
