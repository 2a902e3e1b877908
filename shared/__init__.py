"""Code every service uses: settings, errors, decoding, preprocessing, storage, job records."""
