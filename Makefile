# The table of contents: `make help` lists every target.
PYTHON   ?= python3
# torch is installed only when none is present: `pip install torch==2.13.0` takes a CPU build where
# one lies on local disk and the normal PyPI build elsewhere. TORCH= picks another.
TORCH    ?= torch==2.13.0
CONFIG   ?= configs/multi30k.yaml
RUN      ?= runs/$(basename $(notdir $(CONFIG)))
DATA     ?=
ARGS     ?=
NPROC    ?= 1
CKPT     ?=
ENGINE   ?=
SPLIT    ?=
SENTENCE ?=
GRID     ?= configs/ablations/what_if.yaml
ATTENTION ?=
OUT      ?=
PORT     ?= 6006
export SENTENCE
# A malloc that keeps a long CPU run's memory and speed flat: glibc's free lists grow with every
# step's differently shaped tensors until the process is GBs larger and malloc slows it down.
# tcmalloc where the system has it (Debian / Ubuntu: apt install libtcmalloc-minimal4), else
# mimalloc from its PyPI wheel (make install), which keeps what it frees for reuse: handing it back
# to the kernel costs page faults every step (docs/speed.md). MALLOC= (empty) keeps glibc.
TCMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
              /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4))
MALLOC   ?= $(or $(TCMALLOC),$(shell $(PYTHON) -c 'import importlib.metadata as m; \
              print(*[f.locate() for f in m.files("cmeel-mimalloc") if f.name == "libmimalloc.so"][:1])' 2>/dev/null))
ifneq ($(MALLOC),)
export LD_PRELOAD := $(MALLOC)
export TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD := 1099511627776
export MIMALLOC_PURGE_DELAY := -1
endif

LAUNCH = $(if $(filter 1,$(NPROC)),$(PYTHON),$(PYTHON) -m scripts.torchrun --standalone --nproc_per_node=$(NPROC))
CHECKPOINT = --run-dir "$(RUN)" $(if $(CKPT),--ckpt $(CKPT))

.PHONY: help install test lint train translate evaluate average tune-decode export distill tensorboard summary trace ablate bench bench-scale clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "variables: CONFIG=$(CONFIG) RUN=$(RUN) DATA=<corpus folder> ARGS=\"train.max_steps=100 ...\" NPROC=$(NPROC) CKPT= SPLIT="

install:  ## install the package and its dependencies (keeps an existing torch)
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -m pip install -e ".[dev]"
	@$(PYTHON) -m pip install --only-binary=:all: cmeel-mimalloc || echo "no mimalloc wheel here: glibc malloc"

test:  ## run the test suite (CPU, a few minutes)
	$(PYTHON) -m pytest -q tests

lint:  ## check the code with ruff (rules and line length in pyproject.toml)
	$(PYTHON) -m ruff check .

TRAINING = --config "$(CONFIG)" --run-dir "$(RUN)" $(if $(DATA),--data "$(DATA)") $(ARGS)

# NPROC=2 and more: one process first checks the config and the run folder and prepares the data, so a
# mistake is one line, not a torchrun failure report, and every rank finds the data ready.
train:  ## train CONFIG into RUN (resumes an existing run); NPROC=2 runs DDP under torchrun
	$(if $(filter 1,$(NPROC)),,$(PYTHON) -m scripts.train --prepare-only $(TRAINING) && )$(LAUNCH) -m scripts.train $(TRAINING)

translate:  ## translate SENTENCE="..." (or stdin lines) with RUN's best checkpoint (CKPT= picks one); ATTENTION=a.png
	@$(PYTHON) -m scripts.translate $(CHECKPOINT) $(if $(ENGINE),--engine $(ENGINE)) $(if $(SENTENCE),--sentence "$$SENTENCE") $(if $(ATTENTION),--attention "$(ATTENTION)") $(ARGS)

evaluate:  ## BLEU and chrF of RUN on SPLIT (default: the run's test split); ARGS="decode.beam_size=5" decodes otherwise
	$(PYTHON) -m scripts.evaluate $(CHECKPOINT) $(if $(ENGINE),--engine $(ENGINE)) $(if $(SPLIT),--split $(SPLIT)) $(if $(DATA),--data "$(DATA)") $(ARGS)

average:  ## average RUN's last checkpoints into avg.pt (Sec. 6.1), then tune its length penalty on val
	$(PYTHON) -m scripts.average --run-dir "$(RUN)"

tune-decode:  ## choose the length penalty of RUN's checkpoint (CKPT=) on val; training and average do it too
	$(PYTHON) -m scripts.tune_decode $(CHECKPOINT) $(if $(DATA),--data "$(DATA)") $(ARGS)

export:  ## write RUN's checkpoint (CKPT=) as a CTranslate2 model in RUN/ct2; then ENGINE=ct2 translates with it
	$(PYTHON) -m scripts.export --run-dir "$(RUN)" $(if $(CKPT),--ckpt $(CKPT)) $(ARGS)

distill:  ## translate RUN's training sources into a corpus for a student (OUT=, default RUN/distilled)
	$(PYTHON) -m scripts.distill $(CHECKPOINT) $(if $(OUT),--out "$(OUT)") $(if $(DATA),--data "$(DATA)") $(ARGS)

tensorboard:  ## serve the TensorBoard logs under runs/
	$(PYTHON) -m tensorboard.main --logdir runs --port $(PORT)

summary:  ## parameters, FLOPs per token and the paper ledger of CONFIG
	$(PYTHON) -m scripts.summary --config "$(CONFIG)" $(ARGS)

trace:  ## SENTENCE="..." through RUN's model (or an untrained CONFIG): every stage's paper name and shape
	@$(PYTHON) -m scripts.trace --run-dir "$(RUN)" --config "$(CONFIG)" $(if $(CKPT),--ckpt $(CKPT)) --sentence "$$SENTENCE" $(ARGS)

ablate:  ## train and score every variant of GRID= (configs/ablations/*.yaml) into runs/<grid>; resumes
	$(PYTHON) -m scripts.ablate --grid "$(GRID)"

bench:  ## training and decoding speed, data preparation time (under 10 minutes)
	$(PYTHON) -m scripts.benchmark --config "$(CONFIG)" $(if $(DATA),--data "$(DATA)") $(ARGS)

bench-scale:  ## data at the paper's scale: PAIRS= synthetic pairs (default 4.5M) prepared and trained (~30 min)
	$(PYTHON) -m scripts.bench_scale --pairs $(or $(PAIRS),4500000) $(ARGS)

clean:  ## remove caches (runs/ is kept)
	rm -rf .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
