# facetrip — the commands people and CI use. `make demo` and `make test` install first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
DEMO   := runs/demo

.PHONY: install demo lfw small-sets lfw-ablation test lint bench bench-mining bench-eval bench-data bench-distributed bench-gpu bench-align soak clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Synthesise faces, train, evaluate on held-out identities (with the raw-pixel baseline),
# export and embed. Everything lands in runs/demo/ (replaced on every run).
demo: install
	rm -rf $(DEMO)
	$(BIN)/facetrip synth --out $(DEMO)/data/train --identities 300 --images-per-identity 20 --size 64 --seed 0
	$(BIN)/facetrip synth --out $(DEMO)/data/test --identities 100 --images-per-identity 10 --size 64 --seed 1
	$(BIN)/facetrip train --config configs/quickstart.yaml --set data.root=$(DEMO)/data/train --set data.cache=$(DEMO)/cache --out $(DEMO)/run
	$(BIN)/facetrip eval $(DEMO)/data/test --model $(DEMO)/run/best.pt --baseline pixels --out $(DEMO)/eval
	$(BIN)/facetrip export --model $(DEMO)/run/best.pt --out $(DEMO)/export/model.pt --calibration $(DEMO)/eval/metrics.json
	$(BIN)/facetrip embed $(DEMO)/data/test --model $(DEMO)/export/model.pt --out $(DEMO)/embeddings.npz
	$(BIN)/python scripts/demo_summary.py $(DEMO)/eval/metrics.json

# LFW View 1 from scratch (configs/lfw.yaml, about 45 min on 2 CPU cores): train on the
# DevTrain identities, score DevTest with the thresholds chosen on the run's validation pairs
# (DevTrain people held out of training), and View 2 (pairs.txt, 10 folds, which overlaps the
# training identities: flagged), with the pixel and eigenfaces baselines on the same pairs.
# Everything lands in runs/lfw/.
LFW ?= ../shared/data/lfw
LFW_RUN := runs/lfw
lfw: install
	$(BIN)/facetrip train --config configs/lfw.yaml --set data.root=$(LFW) --set data.identities_file=$(LFW)/peopleDevTrain.txt --set data.cache=$(LFW_RUN)-cache --out $(LFW_RUN) --overwrite
	$(BIN)/facetrip eval $(LFW) --model $(LFW_RUN)/best.pt --cache $(LFW_RUN)-cache --pairs $(LFW)/pairsDevTest.txt --calibrate-held-out --also-pairs $(LFW)/pairs.txt --baseline pixels,eigenfaces --flip --out $(LFW_RUN)

# one test process per core (TEST_WORKERS=0 runs them in this process), each file's tests
# kept in one process so its module fixtures are built once
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# ruff, then the layering contract of pyproject.toml (imports point one way, no package cycle)
lint: install
	$(BIN)/ruff check facetrip tests scripts
	$(BIN)/lint-imports

bench: bench-mining bench-eval bench-data bench-embed

bench-mining: install
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python scripts/bench_mining.py --out bench_results/mining.json

# retrieval_metrics / verification_metrics on 200,000 x 128 embeddings, then what users run:
# `facetrip eval --embeddings` on them end to end in a child process (wall, CPU, peak RSS;
# target < 120 s and < 3 GB on 2 CPUs; ~4 min on an idle 2-CPU machine).
bench-eval: install
	$(BIN)/python scripts/bench_eval.py --out bench_results/eval.json

# Data pipeline vs the model: images/s from memory, JPEG files, the decoded cache, a plain
# torchvision ImageFolder loader and a RecordIO .rec of the same files (facetrip pack)
# (LFW from ../shared/data/lfw, else a synthetic set; ~20 min on 2 CPUs).
bench-data: install
	$(BIN)/python scripts/bench_data.py --out bench_results/data.json

# images/s of 1 vs 2 training processes (gloo) on one global batch, share of the all_gather
bench-distributed: install
	$(BIN)/python scripts/bench_distributed.py --out bench_results/distributed.json

# CUDA only: facetrip train (ResNet-50, 112 px, bf16, batch 512, decoded cache) vs the model
# alone on an in-memory batch; synthesises its data set first (~2-5 min; --smoke runs on CPU)
bench-gpu: install
	$(BIN)/python scripts/bench_gpu_train.py --out bench_results/gpu_train.json

# facetrip embed from JPEG files vs the model's forward-only limit, ResNet-18 at 112 px
# (LFW from ../shared/data/lfw, else synthetic 250 px JPEGs; ~2 min on 2 CPUs)
bench-embed: install
	$(BIN)/python scripts/bench_embed.py --out bench_results/embed.json

# facetrip align (end to end, a fresh process) vs MTCNN alone on the same decoded images, both
# in one process per core; plus the re-detected landmarks' distance to the template
# (all 13,233 LFW images from ../shared/data/lfw, ~8 min on 2 CPUs; LIMIT=3000: ~2 min, where
# start-up weighs more)
LIMIT ?= 0
bench-align: install
	$(BIN)/python scripts/bench_align.py --data $(LFW) --limit $(LIMIT) --out bench_results/align.json

# configs/small.yaml on three disjoint small sets cut from LFW's DevTrain people (30 training +
# 10 test people each, 5-20 images a person), against eigenfaces and pixels on the same pairs
small-sets: install
	$(BIN)/python scripts/small_sets.py --lfw $(LFW) --out bench_results/small_sets.json

# the real-faces levers one at a time against configs/lfw.yaml on the same data and seed
# (ROWS="baseline cosface ..."; EPOCHS=12 ranks them in short runs, 0 = the config's 80)
ROWS ?= baseline cosface ema memory
EPOCHS ?= 12
lfw-ablation: install
	$(BIN)/python scripts/lfw_ablation.py --lfw $(LFW) --rows $(ROWS) --epochs $(EPOCHS) --out bench_results/ablation.json

# kill -9 a short synthetic run at 20 random points, resume each, check bit-identity (~5 min)
soak: install
	$(BIN)/python scripts/soak_resume.py --kills 20 --out bench_results/soak.json

clean:
	rm -rf $(VENV) runs bench_results .pytest_cache .ruff_cache *.egg-info
