.PHONY: build debug test bench docs dist clean
build:
	python setup.py build_ext --inplace
debug:
	MMEMU_DEBUG=1 python setup.py build_ext --inplace --force
test:
	pytest
bench:
	pytest benches --benchmark-only
docs:
	python docs/gen_api.py
dist:
	.ci/check-dist
clean:
	rm -rf build dist mmemu/_core.c mmemu/*.so mmemu/host/*.so
