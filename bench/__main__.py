"""`make bench`: every benchmark in turn (each also runs on its own: `python -m bench.<name>`)."""

from bench import serving_latency

if __name__ == "__main__":
    serving_latency.main()
