# The two commands of the README: `make run` and `make test`. Both install what is missing
# (scripts/setup.sh) and build first.
PRESET ?= release
BUILD_DIR := build/$(PRESET)
EDGEQ := $(BUILD_DIR)/tools/edgeq
OUT ?= out

.PHONY: all setup configure build run test clean

all: build

setup:
	scripts/setup.sh

configure: setup
	cmake --preset $(PRESET)

build: configure
	cmake --build --preset $(PRESET)

# The main job on the real Fashion-MNIST, from the checkpoint in models/, then the throughput of
# the deployed models (out/bench.json), then the quantizer's sweep of presets, methods and
# algorithms on the same model (out/sweep.json).
run: build
	$(EDGEQ) run --out $(OUT)
	$(EDGEQ) bench --out $(OUT)
	$(EDGEQ) sweep --out $(OUT)
	$(EDGEQ) report --out $(OUT)

test: build
	ctest --preset $(PRESET)

clean:
	rm -rf build out
