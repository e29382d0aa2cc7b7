// The Node.js reference tus server, the baseline of bench/tus_vs_node.py: @tus/server with
// @tus/s3-store writing into the same S3 server (SeaweedFS) the benchmark starts for the gateway.
// partSize and minPartSize are both set to the gateway's part size for the file being sent, so
// both servers cut the same parts. Configuration comes from the environment (see tus_vs_node.py).
import http from "node:http";
import { Server } from "@tus/server";
import { S3Store } from "@tus/s3-store";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
};
const partSize = Number(env("BENCH_PART_SIZE"));
const store = new S3Store({
  partSize,
  minPartSize: partSize,
  useTags: false, // SeaweedFS: no object tagging on multipart uploads needed for the baseline
  s3ClientConfig: {
    bucket: env("BENCH_S3_BUCKET"),
    region: env("BENCH_S3_REGION"),
    endpoint: env("BENCH_S3_ENDPOINT"),
    forcePathStyle: true,
    // The same setting the gateway and the boto3 baseline use (no CRC32 on every part).
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
    credentials: {
      accessKeyId: env("BENCH_S3_ACCESS_KEY_ID"),
      secretAccessKey: env("BENCH_S3_SECRET_ACCESS_KEY"),
    },
  },
});
const tus = new Server({ path: "/files", datastore: store });
const server = http.createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200).end("ok");
    return;
  }
  tus.handle(req, res);
});
server.listen(Number(env("BENCH_PORT")), "127.0.0.1", () => {
  console.log(`tus node baseline on 127.0.0.1:${server.address().port}, part size ${partSize}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => server.close(() => process.exit(0)));
