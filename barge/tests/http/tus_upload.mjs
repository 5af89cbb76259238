// One tus upload with tus-js-client (Node), for barge's HTTP tests.
//   node tus_upload.mjs ENDPOINT FILE [--resume URL] [--stop-after BYTES] [--chunk-size BYTES]
//                       [--parallel N] [--defer-length]
// --parallel N uploads N pieces at once and has the server join them (tus concatenation);
// --defer-length starts without a length and gives it with the last chunk (chunk size required).
// Prints one JSON line: {"url": ..., "done": true} when stored, or {"url": ..., "sent": N} when
// --stop-after ends the process abruptly mid-way (a killed client), or {"error": ...}.
import fs from "node:fs";
import path from "node:path";
import { PassThrough } from "node:stream";
import * as tus from "tus-js-client";

const [endpoint, file, ...rest] = process.argv.slice(2);
const opt = (name) => {
  const i = rest.indexOf(name);
  return i >= 0 ? rest[i + 1] : undefined;
};
const stopAfter = opt("--stop-after") ? Number(opt("--stop-after")) : undefined;
const size = fs.statSync(file).size;
const headers = process.env.BARGE_TOKEN ? { Authorization: `Bearer ${process.env.BARGE_TOKEN}` } : {};

const defer = rest.includes("--defer-length");
const parallel = opt("--parallel") ? Number(opt("--parallel")) : 1;
// A deferred length is for sources of unknown size: a plain stream (tus-js-client takes an
// fs.ReadStream for a file of known size, and then sizes its last chunk wrongly).
const source = defer ? fs.createReadStream(file).pipe(new PassThrough()) : fs.createReadStream(file);
const upload = new tus.Upload(source, {
  endpoint,
  uploadUrl: opt("--resume"),
  // With parallel uploads tus-js-client takes the size from the file itself.
  uploadSize: defer || parallel > 1 ? undefined : size,
  uploadLengthDeferred: defer,
  parallelUploads: parallel,
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
