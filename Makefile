# Two commands are all a user needs:  `make train`  and  `make test`.
# Both create .venv and install the project (editable, so configs/ is read in place) on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup train test test-fast test-gpu test-cluster clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/resnet-train $(ARGS)

# Two test processes (pytest-xdist), each taking a whole test file at a time so that a file's
# shared runs are made once: one process's TensorFlow start-ups, tracing and file work overlap the
# other's training. TEST_JOBS=0 runs the suite in this one process.
TEST_JOBS ?= 2

test: $(STAMP)
	$(VENV)/bin/ruff check resnet_train tests scripts
	$(VENV)/bin/ruff format --check resnet_train tests scripts
	$(VENV)/bin/python -m pytest -n $(TEST_JOBS) --dist loadfile --durations=25 $(PYTEST_ARGS)

# The loop before every commit: lint, then the tests that took under 1 s each (tests/conftest.py's
# tiers, from tests/durations.json).
test-fast: $(STAMP)
	$(VENV)/bin/ruff check resnet_train tests scripts
	$(VENV)/bin/ruff format --check resnet_train tests scripts
	$(VENV)/bin/python -m pytest -n $(TEST_JOBS) --dist loadfile -m "not slow and not gpu" $(PYTEST_ARGS)

# The GPU tier: the tests marked gpu, with the machine's GPUs visible (the suite above hides them);
# skipped, and said so, where TensorFlow sees none. scripts/gpu_check.py measures the rest.
test-gpu: $(STAMP)
	$(VENV)/bin/python -m pytest -m gpu $(PYTEST_ARGS)

# The cluster tier: the engines for real, a one-node SLURM cluster on 127.0.0.1 that the tests start
# and stop (tests/slurm_cluster.py; slurm-wlm and munge installed first where missing, as root, apt)
# and a local Ray cluster (tests/test_ray_train.py).
test-cluster: $(STAMP)
	bash scripts/install_slurm.sh
	$(VENV)/bin/python -m pytest -m cluster --durations=10 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs
