# Two commands on a fresh clone (each sets up .venv with the pinned dependencies first):
#   make demo   - the main job: train + evaluate a ConvNeXt on the built-in synthetic dataset
#   make test   - ruff, then the default test suite (slow tests: make test-slow)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/synthetic_demo
# Two pytest-xdist workers, whole files per worker (module fixtures build once); PYTEST_ARGS= runs serially.
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: install install-reference demo predict-demo lint test test-slow benchmark clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q -c constraints.txt --no-deps jax2onnx
	touch $@

# PyTorch references for parity tests and benchmarks: CPU torch, and timm without its torchvision
# dependency resolution: torchvision's registry wheel is a CUDA build whose compiled ops cannot load beside
# CPU torch; ConvNeXt needs none of them (tests/conftest.py imports timm around that). facenet-pytorch
# (the MTCNN reference) pins torch < 2.3 and numpy < 2, so it too is installed without its dependencies.
$(VENV)/.installed-reference: $(VENV)/.installed
	$(PY) -m pip install -q -c constraints.txt -e '.[reference]'
	$(PY) -m pip install -q -c constraints.txt --no-deps timm torchvision facenet-pytorch
	touch $@

install: $(VENV)/.installed
install-reference: $(VENV)/.installed-reference

demo: $(VENV)/.installed
	$(PY) -m fer_jax.main --config=experiments/convnext_synthetic.py --workdir=$(WORKDIR)

# fer-jax predict / explain on rendered photos and a video (no dataset needed): runs/predict_demo/
predict-demo: $(VENV)/.installed
	$(PY) -m fer_jax.predict.demo --out_dir=runs/predict_demo

lint: $(VENV)/.installed
	$(PY) -m ruff check .

test: $(VENV)/.installed-reference
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: $(VENV)/.installed-reference
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

benchmark: $(VENV)/.installed-reference
	$(PY) benchmarks/convnext_train_step.py

clean:
	rm -rf $(VENV) runs
