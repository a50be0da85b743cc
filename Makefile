# The README's commands, and the benchmarks.
.PHONY: demo test bench reliability

demo:
	scripts/demo.sh

test:
	scripts/test.sh

# Builds the extension in release mode, measures, prints a table of ratios.
bench:
	scripts/bench.sh

# The reliability and security suite alone (faults, crashes, hostile input, roles).
reliability:
	scripts/reliability.sh
