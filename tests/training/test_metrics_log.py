"""The run directory's metrics.jsonl: one writer, one reader."""

from facetrip.training.metrics_log import MetricsLog, read_run_log
from facetrip.training.rundir import RunDir


def test_metrics_rows_round_trip_and_garbage_lines_are_skipped(tmp_path):
    run = RunDir(tmp_path)
    with MetricsLog(run.metrics) as log:
        log.step(0, 1, 0.5, 1e-3, 100.0, {"active_fraction": 0.25})
        log.epoch(0, 1, {"accuracy": 0.9}, 0)
    with open(run.metrics, "a") as f:
        f.write('{"type": "step", "epoch": 1, "step": 2, "lo')  # a run killed mid-line
    with MetricsLog(run.metrics, append=True) as log:
        log.step(1, 3, 0.25, 1e-3, 90.0, {})
    got = read_run_log(run.metrics)
    assert [r["step"] for r in got.steps] == [1, 3]  # the torn row alone is lost
    assert got.steps[0] == {"type": "step", "epoch": 0, "step": 1, "loss": 0.5, "lr": 1e-3,
                            "images_per_s": 100.0, "active_fraction": 0.25}
    assert got.epochs == [{"type": "epoch", "epoch": 0, "step": 1, "val": {"accuracy": 0.9},
                           "replaced_images": 0, "skipped_steps": 0}]
    assert run.holds_run()  # its metrics are here: a new run must not silently replace them
