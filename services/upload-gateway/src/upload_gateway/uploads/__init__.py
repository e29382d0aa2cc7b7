"""Uploads: sessions, tus 1.0, S3 multipart part signing, commit, and the verdicts that end them."""
