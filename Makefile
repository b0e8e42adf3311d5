# make run   - create .venv, install requirements, start the app on the bundled default model (127.0.0.1 only)
# make test  - create .venv, install requirements, run the test suite
# make ray   - add the optional Ray install (requirements-ray.txt) for python -m bmcore archive --ray
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501

.PHONY: run test bench train ray clean

$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

run: $(STAMP)
	@echo "Open http://127.0.0.1:$(PORT) . With no accounts yet, the first page prints a one-time setup link here to create the first admin."
	$(PY) -m streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT)

test: $(STAMP)
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

ray: $(STAMP)
	$(PY) -m pip install -q -r requirements-ray.txt

bench: $(STAMP)
	$(PY) -m bmcore bench --out bench/results/cpu.json

train: $(STAMP)
	$(PY) -m train.train --config train/configs/default.yaml

clean:
	rm -rf $(VENV) .pytest_cache
