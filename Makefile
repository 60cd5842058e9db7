# Two commands a new user needs:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: setup test-deps bench-deps demo lint test test-fast clean

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
# split for the quality guard (benchmarks/quality.py); MATE's wallpapers and Tango's icons are the real
# photographs and icons of the copies guard (benchmarks/copies.py). Nothing is downloaded at run time.
TEST_DEBS := chromium dataset-fashion-mnist mate-backgrounds tango-icon-theme
# The real folders of benchmarks/copies.py: wallpapers, clip art and icon themes nobody here made.
BENCH_DEBS := $(TEST_DEBS) plasma-workspace-wallpapers ukui-wallpapers gnome-backgrounds lomiri-wallpapers \
	openclipart-png oxygen-icon-theme gnome-icon-theme adwaita-icon-theme hicolor-icon-theme
define install_debs
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing $$missing (Debian packages)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi
endef

test-deps:
	$(call install_debs,$(TEST_DEBS))

bench-deps: setup  ## the benchmarks' Debian packages and their peers (imagehash, imagededup)
	$(call install_debs,$(BENCH_DEBS))
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'

lint: setup  ## ruff: pyflakes and pycodestyle's error classes on the whole tree (pyproject.toml)
	$(VENV)/bin/ruff check .

test: setup test-deps lint  ## the whole suite, as CI runs it
	$(VENV)/bin/python -m pytest

test-fast: setup lint  ## the edit loop: every test but the quality guards, the server and the integration tests
	$(VENV)/bin/python -m pytest -m "not slow and not server and not integration"

clean:
	rm -rf work demo-data
