# vlablocks developer commands. `make demo` and `make test` are all a newcomer needs.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_STAMP := $(VENV)/.system-deps
export MUJOCO_GL ?= osmesa
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install test check autoformat clean demo

install: $(SYSTEM_STAMP) $(STAMP)

$(SYSTEM_STAMP): scripts/install_system_deps.sh
	@mkdir -p $(VENV)
	./scripts/install_system_deps.sh
	@touch $@

# Installs the package with the dev tools and the simulators (gym-aloha, gym-pusht).
# Re-installs only when the package metadata (or this Makefile) changes; otherwise this target is a no-op.
$(STAMP): setup.py pyproject.toml Makefile
	@test -x $(PY) || "$$(./scripts/find_python312.sh)" -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev,sim]'
	@touch $@

# pytest exits 5 when it collected nothing: that proves nothing, so it fails the target.
test: install
	@$(PY) -m pytest tests -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

check: install
	$(VENV)/bin/black --check --quiet .
	$(VENV)/bin/ruff check .

autoformat: install
	$(VENV)/bin/black --quiet .
	$(VENV)/bin/ruff check --fix .

# Toy data -> train a tiny QwenOFT on CPU -> serve it -> closed-loop eval -> success rate.
demo: install
	$(VENV)/bin/vlablocks demo

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache runs
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
