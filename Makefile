# Two commands on a fresh Debian machine (root, package registries only):
#   make verify   runs python -m poc.stage1_iocp (under Wine 8.0 here; plain python on Windows)
#   make test     runs every check: ruff, mypy (linux + win32), the Linux pytest leg, the Wine
#                 legs (pure ctypes; the C speedups, Debug and optimized, cross-built first)
#   make bench    runs every benchmark and rewrites bench/results/ and the README's table
# Both install what they need (Debian packages, the Windows python, wheels) into .cache/,
# idempotently.

ifeq ($(OS),Windows_NT)

verify:
	python -m poc.stage1_iocp
test:
	python -m pytest tests

else

verify:
	@bash tools/install-linux.sh
	@bash tools/install-wine-python.sh
	@tools/winpy -m poc.stage1_iocp

test:
	@bash tools/run-tests.sh

bench:
	@bash tools/run-bench.sh

endif

clean:
	rm -rf .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis

.PHONY: verify test bench clean
