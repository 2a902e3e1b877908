"""`make bench`: every benchmark in turn (each also runs on its own: `python -m bench.<name>`)."""

from bench import e2e, feedback, pixel_checks, serving_latency, training_throughput

if __name__ == "__main__":
    serving_latency.main()
    e2e.main()
    feedback.main([])
    training_throughput.main()
    pixel_checks.main([])
