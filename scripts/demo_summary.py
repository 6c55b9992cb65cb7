"""Print the demo's headline numbers from an eval metrics.json: model vs raw-pixel baseline."""

import json
import sys

metrics = json.load(open(sys.argv[1]))
model = metrics["verification"]["accuracy"]
pixels = metrics["baselines"]["pixels"]["verification"]["accuracy"]
n = metrics["verification"]["n_pairs"]
print(f"\nheld-out verification accuracy ({n} pairs, 10-fold): model {model:.4f}, "
      f"raw pixels {pixels:.4f}")
