.PHONY: build debug test bench clean
build:
	python setup.py build_ext --inplace
debug:
	MMEMU_DEBUG=1 python setup.py build_ext --inplace --force
test:
	pytest
bench:
	pytest benches --benchmark-only
clean:
	rm -rf build mmemu/_core.c mmemu/*.so mmemu/host/*.so
