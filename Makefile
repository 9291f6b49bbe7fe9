# slidemill: `make test` and `make demo` each do all their own set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TOOLS := $(sort $(wildcard tools/*/pyproject.toml))
PACKAGES := shared $(dir $(TOOLS))
STAMP := $(VENV)/.installed

.PHONY: install test lint schemas demo docker clean

install: $(STAMP)

# Every package of the repo in editable mode, with the test tools (tests/requirements.txt). Re-runs when
# a pyproject or that list changes.
$(STAMP): shared/pyproject.toml $(TOOLS) tests/requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(foreach p,$(PACKAGES),-e $(p:%/=%)) -r tests/requirements.txt
	touch $@

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -q

schemas: install
	$(BIN)/python -m slidemill.shared.schemas schemas

# The whole pipeline on the bundled sample slide (a few minutes on 2 CPU cores); results in demo-output/.
demo: install
	BIN=$(BIN) bash demo/run-demo.sh demo-output

# Every tool's image, CPU and GPU flavours (needs Docker with BuildKit); see docker/build.sh --help.
docker:
	bash docker/build.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
