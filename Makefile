# The README's commands, and the benchmarks.
.PHONY: demo test bench

demo:
	scripts/demo.sh

test:
	scripts/test.sh

# Builds the extension in release mode, measures, prints a table of ratios.
bench:
	scripts/bench.sh
