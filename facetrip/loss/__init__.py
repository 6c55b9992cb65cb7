"""Distances, triplet mining and the triplet losses (the functional core of training)."""

from facetrip.loss.distances import DISTANCES, pairwise_distances
from facetrip.loss.triplet import MININGS, TripletLoss, triplet_loss, triplet_loss_with_stats

__all__ = ["DISTANCES", "MININGS", "TripletLoss", "pairwise_distances", "triplet_loss",
           "triplet_loss_with_stats"]
