"""Celery worker: reads an upload, preprocesses it, asks the model server, writes the results."""
