# Two commands a new user needs:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: setup test-deps demo test clean

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# pip, not uv/poetry: torch and torchvision come from local disk on these machines.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup  ## whole pipeline on the bundled Fashion-MNIST test split (10,000 images) -> work/demo
	$(VENV)/bin/vaepipe demo

# Debian packages the tests use: chromium renders the reports; dataset-fashion-mnist is the training
# split for the quality guard (benchmarks/quality.py). Nothing is downloaded at run time.
TEST_DEBS := chromium dataset-fashion-mnist
test-deps:
	@missing=$$(for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing $$missing (Debian packages for the tests)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

test: setup test-deps
	$(VENV)/bin/python -m pytest

clean:
	rm -rf work demo-data
