"""HTTP front door: uploads, job status, authentication, the web page and metrics."""
