"""One tus upload with tuspy, for barge's HTTP tests.

    python3 tus_upload.py ENDPOINT FILE [--resume URL] [--stop-after BYTES] [--chunk-size BYTES]

Prints one JSON line: {"url": ..., "done": true} when stored, or {"url": ..., "sent": N} when
--stop-after ends the process abruptly mid-way (a killed client)."""
import argparse
import json
import os
import sys

from tusclient import client

ap = argparse.ArgumentParser()
ap.add_argument("endpoint")
ap.add_argument("file")
ap.add_argument("--resume")
ap.add_argument("--stop-after", type=int)
ap.add_argument("--chunk-size", type=int, default=4 << 20)
a = ap.parse_args()
headers = {"Authorization": "Bearer " + os.environ["BARGE_TOKEN"]} if os.environ.get("BARGE_TOKEN") else {}
c = client.TusClient(a.endpoint, headers=headers)
up = c.uploader(file_path=a.file, chunk_size=a.chunk_size, url=a.resume,
                metadata={"filename": os.path.basename(a.file)}, retries=0)
if a.stop_after is not None:
    while up.offset < up.get_file_size():
        up.upload_chunk()
        if up.offset >= a.stop_after:
            print(json.dumps({"url": up.url, "sent": up.offset}), flush=True)
            os._exit(3)  # no cleanup, like a killed client
up.upload()
print(json.dumps({"url": up.url, "done": True}), flush=True)
