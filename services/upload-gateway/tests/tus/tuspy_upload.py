"""Uploads one file with tuspy given the session's upload_url either as the client's endpoint
(tus creation first) or as the uploader's `url` (what a client that stored the URL resumes from).

Usage: python tuspy_upload.py endpoint|url URL FILE HEADERS_JSON
Prints {"start": offset} once the uploader knows where to begin, {"offset": n} after each chunk.
"""

import json
import sys

from tusclient.client import TusClient

MiB = 1024 * 1024


def main(option: str, url: str, path: str, headers: str) -> None:
    client = TusClient(url, headers=json.loads(headers))
    # retries: a resumed PATCH may meet the killed client's request still holding the upload (423).
    uploader = client.uploader(
        path, url=url if option == "url" else None, chunk_size=5 * MiB, retries=5, retry_delay=1,
        metadata={"filename": "photo.jpg", "filetype": "image/jpeg"},
    )  # fmt: skip
    if uploader.url is None:
        uploader.set_url(uploader.create_url())
    print(json.dumps({"start": uploader.offset}), flush=True)
    while uploader.offset < uploader.get_file_size():
        uploader.upload_chunk()
        print(json.dumps({"offset": uploader.offset}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
