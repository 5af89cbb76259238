// The reference tus server (@tus/server with @tus/file-store), for benchmarks against barge.
//   node tusd_node.mjs DIR PORT     (prints "listening on 127.0.0.1:PORT" when ready)
import http from "node:http";
import { Server } from "@tus/server";
import { FileStore } from "@tus/file-store";

const [dir, port] = process.argv.slice(2);
const tus = new Server({ path: "/uploads", datastore: new FileStore({ directory: dir }) });
http.createServer((req, res) => tus.handle(req, res)).listen(Number(port), "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${port}`);
});
