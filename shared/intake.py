"""Storage names services/trainer imports from here; their home is `shared.jobs.keys`."""

from shared.jobs.keys import CONFIRMED_LABEL_FILE, CONFIRMED_PREFIX

__all__ = ["CONFIRMED_LABEL_FILE", "CONFIRMED_PREFIX"]
