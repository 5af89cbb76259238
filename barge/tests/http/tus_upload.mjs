// One tus upload with tus-js-client (Node), for barge's HTTP tests.
//   node tus_upload.mjs ENDPOINT FILE [--resume URL] [--stop-after BYTES] [--chunk-size BYTES]
// Prints one JSON line: {"url": ..., "done": true} when stored, or {"url": ..., "sent": N} when
// --stop-after ends the process abruptly mid-way (a killed client), or {"error": ...}.
import fs from "node:fs";
import path from "node:path";
import * as tus from "tus-js-client";

const [endpoint, file, ...rest] = process.argv.slice(2);
const opt = (name) => {
  const i = rest.indexOf(name);
  return i >= 0 ? rest[i + 1] : undefined;
};
const stopAfter = opt("--stop-after") ? Number(opt("--stop-after")) : undefined;
const size = fs.statSync(file).size;
const headers = process.env.BARGE_TOKEN ? { Authorization: `Bearer ${process.env.BARGE_TOKEN}` } : {};

const upload = new tus.Upload(fs.createReadStream(file), {
  endpoint,
  uploadUrl: opt("--resume"),
  uploadSize: size,
  chunkSize: opt("--chunk-size") ? Number(opt("--chunk-size")) : Infinity,
  metadata: { filename: path.basename(file) },
  headers,
  retryDelays: [],
  onProgress(sent) {
    if (stopAfter !== undefined && sent >= stopAfter && upload.url) {
      console.log(JSON.stringify({ url: upload.url, sent }));
      process.exit(3);
    }
  },
  onSuccess() {
    console.log(JSON.stringify({ url: upload.url, done: true }));
  },
  onError(error) {
    console.log(JSON.stringify({ error: String(error) }));
    process.exit(1);
  },
});
upload.start();
