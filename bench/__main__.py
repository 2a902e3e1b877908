"""`make bench`: the serving latency, end-to-end, reader feedback, training throughput and pixel
check benchmarks in turn, each with its default options. Each also runs on its own with its own
options (`python -m bench.<name> --help`); the drift check, the scope screen's figures, the
Grad-CAM band and the de-identifier comparison run only on their own."""

import argparse

from bench import e2e, feedback, pixel_checks, serving_latency, training_throughput


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m bench", description=__doc__).parse_args(argv)
    serving_latency.main([])
    e2e.main([])
    feedback.main([])
    training_throughput.main([])
    pixel_checks.main([])


if __name__ == "__main__":
    main()
