from facetrip.training.loop import CollapseDetector

COLLAPSED = {"mean_pairwise_distance": 1e-5, "mean_d_an": 1e-5, "n_triplets": 10.0}
HEALTHY = {"mean_pairwise_distance": 0.8, "mean_d_an": 0.9, "n_triplets": 10.0}
EMPTY = {"mean_pairwise_distance": 0.0, "mean_d_an": 0.0, "n_triplets": 0.0}


def test_collapse_fires_once_after_patience_consecutive_steps():
    det = CollapseDetector(patience=3)
    assert [det.update(COLLAPSED) for _ in range(5)] == [False, False, True, False, False]


def test_a_healthy_step_resets_and_empty_batches_are_not_evidence():
    det = CollapseDetector(patience=3)
    for stats in (COLLAPSED, COLLAPSED, HEALTHY, COLLAPSED, COLLAPSED):
        assert not det.update(stats)
    empty = CollapseDetector(patience=2)
    assert not any(empty.update(EMPTY) for _ in range(5))

