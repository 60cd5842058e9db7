# Two commands a new user needs:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: setup browser demo test clean

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# pip, not uv/poetry: torch and torchvision come from local disk on these machines.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup  ## whole pipeline on the bundled Fashion-MNIST test split (10,000 images) -> work/demo
	$(VENV)/bin/vaepipe demo

# The report tests render pages in headless Chromium (Debian's package; nothing is downloaded at run time).
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing chromium for the report tests"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

test: setup browser
	$(VENV)/bin/python -m pytest

clean:
	rm -rf work demo-data
