# Two commands a new user needs:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench-quality clean

# pip, not uv/poetry: torch and torchvision come from local disk on these machines.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup  ## whole pipeline on the bundled Fashion-MNIST test split (10,000 images) -> work/demo
	$(VENV)/bin/vaepipe demo

test: setup
	$(VENV)/bin/python -m pytest

clean:
	rm -rf work demo-data
