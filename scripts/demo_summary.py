"""Print the demo's headline numbers from an eval metrics.json: model vs raw-pixel baseline.

usage: python scripts/demo_summary.py runs/demo/eval/metrics.json
"""

import json
import sys
from pathlib import Path

# What the demo is built to show (issue 2): the network verifies unseen identities well,
# raw pixels do not. Reported, never enforced: the numbers are whatever the run produced.
MODEL_TARGET, PIXELS_LIMIT = 0.95, 0.75

path = Path(sys.argv[1])
metrics = json.loads(path.read_text())
model = metrics["verification"]["accuracy"]
pixels = metrics["baselines"]["pixels"]["verification"]["accuracy"]
n = metrics["verification"]["n_pairs"]
ok = model >= MODEL_TARGET and pixels <= PIXELS_LIMIT
demo = path.parent.parent
print(f"\nheld-out verification accuracy ({n} pairs, 10-fold): model {model:.4f}, "
      f"raw pixels {pixels:.4f}")
print(f"expected: model >= {MODEL_TARGET}, pixels <= {PIXELS_LIMIT}: "
      f"{'yes' if ok else 'NO (see the report)'}")
print(f"report: {path.parent / 'report.html'}  model: {demo / 'export' / 'model.pt'}  "
      f"embeddings: {demo / 'embeddings.npz'}")
