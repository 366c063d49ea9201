# airflow-provider-mlops — the two commands: `make demo` and `make test`.
# Everything is set up from nothing: uv, the control-plane venv (.venv), and the training,
# serving and drift runtime environments (.runtimes/), each from docker/<name>/requirements.txt.
SHELL := /bin/bash
ROOT := $(CURDIR)
PYTHON_BOOTSTRAP ?= python3.11
# uv: the one on PATH, else a private copy installed with pip into .tools/
UV := $(or $(shell command -v uv 2>/dev/null),$(ROOT)/.tools/bin/uv)
export PATH := $(dir $(UV)):$(PATH)
VENV := $(ROOT)/.venv
RUNTIMES := $(ROOT)/.runtimes
PYTEST_ARGS ?=

.PHONY: help setup venv runtimes browser images demo stop stack-celery stop-celery compose compose-down test lint lock clean

help:
	@echo "make demo   set up everything, run the pipeline end to end, leave Airflow and MLflow UIs up"
	@echo "make stop   stop what make demo started"
	@echo "make test   set up everything and run the test suite"
	@echo "make images build the images with podman (serving, drift, training, airflow, postgres, redis), cached by input hash"
	@echo "make stack-celery   CeleryExecutor on PostgreSQL + Redis, two workers, as local processes (make stop-celery)"
	@echo "make compose        the production-like stack in containers (docker/compose.yaml): Celery, PostgreSQL, Redis, MLflow"
	@echo "make compose-down   stop it (its data is kept in .compose/)"
	@echo "make lint   ruff"
	@echo "make lock   re-resolve docker/airflow/requirements.txt from requirements.in"

$(ROOT)/.tools/bin/uv:
	$(PYTHON_BOOTSTRAP) -m venv $(ROOT)/.tools
	$(ROOT)/.tools/bin/pip install --quiet uv

venv: $(UV)
	bash scripts/runtime_env.sh airflow $(VENV)
	@$(MAKE) --no-print-directory $(VENV)/.provider.stamp

# re-register the provider (entry points: provider info, plugins) when pyproject.toml changes
$(VENV)/.provider.stamp: pyproject.toml
	$(UV) pip install --quiet --python $(VENV)/bin/python --no-deps --editable $(ROOT)
	@touch $@

runtimes: $(UV)
	bash scripts/runtime_env.sh drift $(RUNTIMES)/drift
	bash scripts/runtime_env.sh serving $(RUNTIMES)/serving
	bash scripts/runtime_env.sh training $(RUNTIMES)/training

setup: venv runtimes

# headless Chromium (Debian packages) for the browser test of the UI plugin; idempotent
browser:
	bash scripts/install_browser.sh

demo: setup
	$(VENV)/bin/python scripts/stack.py demo

stop:
	@if [ -x $(VENV)/bin/python ]; then $(VENV)/bin/python scripts/stack.py stop; fi

# the runtime images (podman, root; see scripts/images.sh): built when their inputs changed
images: $(UV)
	bash scripts/images.sh

# the CeleryExecutor topology as local processes: PostgreSQL (the machine's, 127.0.0.1:5432) and
# Redis (127.0.0.1:6379), two Celery workers (docs/deployment.md)
stack-celery: setup
	$(VENV)/bin/python scripts/stack.py celery

stop-celery:
	@if [ -x $(VENV)/bin/python ]; then $(VENV)/bin/python scripts/stack.py stop-celery; fi

# docker/compose.yaml: Airflow's components, PostgreSQL, Redis and MLflow in containers (docs/deployment.md)
compose: $(UV)
	bash scripts/compose.sh up

compose-down:
	bash scripts/compose.sh down

# tests/containers runs the images; without podman and root, images says so and they are skipped
test: setup browser
	@if [ "$$(id -u)" = 0 ] || command -v podman >/dev/null; then $(MAKE) --no-print-directory images; \
	else echo "make test: not root and no podman: the runtime images are not built, tests/containers is skipped"; fi
	$(VENV)/bin/ruff check provider dags tests bench scripts
	MLOPS_RUNTIMES_DIR=$(RUNTIMES) $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check provider dags tests bench scripts
	$(VENV)/bin/ruff format --check provider dags tests bench scripts

lock: $(UV)
	# --upgrade-package torch: the lock's portable `torch==X` pin would otherwise steer the resolver to
	# the PyPI (CUDA) build instead of the local CPU wheel, pulling in the nvidia-* packages.
	UV_FIND_LINKS="$$(echo $${PIP_FIND_LINKS:-} | tr ' ' ',')" $(UV) pip compile --quiet --python 3.11 \
	    --upgrade-package torch docker/airflow/requirements.in -o docker/airflow/requirements.txt
	# keep the lock portable: the CPU build's local label only exists in a local wheel folder
	sed -i 's/^torch==\([0-9.]*\)+cpu/torch==\1/' docker/airflow/requirements.txt

clean: stop
	rm -rf .mlops
