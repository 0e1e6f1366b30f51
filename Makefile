# Two commands do all set-up on a fresh Debian/Ubuntu machine with Python 3.11:
#   make demo   - the main job on the bundled model and Fashion-MNIST
#   make test   - lint + the full test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test venv data lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,tfds,parity,plots]'
	# timm's torchvision dependency has no working CPU wheel beside torch 2.13.0: timm only
	# needs it at import time, and the parity tests stand in a placeholder for it.
	$(BIN)/pip install --quiet --no-deps 'timm==1.0.31'
	touch $(STAMP)

venv: $(STAMP)

# Debian's dataset-fashion-mnist holds the IDX files; installed when apt is available.
data:
	@if [ ! -f $(FMNIST)/t10k-images-idx3-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "install Fashion-MNIST IDX files and set TOFU_JAX_FASHION_MNIST"; fi; \
	fi

demo: venv data
	$(BIN)/tofu-jax

lint: venv
	$(BIN)/ruff check tofu_jax tests experiments
	$(BIN)/ruff format --check tofu_jax tests experiments

test: venv data lint
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
