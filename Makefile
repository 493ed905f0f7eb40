# The two commands of the README. Both create .venv and install shopscore into it first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint install install-dev test-tools kafka-jars clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# setuptools tells every editable install to beware of folders named like the package
# ("InformationOnly"): nothing to act on, so it is filtered out of the first install's output.
QUIET_SETUPTOOLS := PYTHONWARNINGS="ignore:Editable installation"

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(QUIET_SETUPTOOLS) $(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(QUIET_SETUPTOOLS) $(BIN)/pip install --quiet -e '.[dev,train]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# A real Prometheus and promtool for tests/deploy (Debian's package, when not on PATH).
test-tools:
	@scripts/install-test-tools

# Apache Kafka's jars (Maven Central, cached in .shopscore/kafka) for the tests on Kafka
kafka-jars: install-dev
	@$(BIN)/python -m stream.tools.apache_kafka

## run: the service on its embedded default (broker + worker + demo producer); Ctrl-C stops it
run: install
	$(BIN)/shopscore run $(ARGS)

## test: the whole test suite against real brokers (embedded, and Apache Kafka) and Prometheus
test: install-dev test-tools kafka-jars
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .shopscore .pytest_cache .hypothesis
