// Uploads one file with tus-js-client's parallel uploads (tus concatenation): N partial uploads
// at once, then the final upload that joins them.
// Usage: node parallel.mjs ENDPOINT FILE HEADERS_JSON METADATA_JSON PARALLEL [CHUNK_BYTES]
// Prints {"url": ..., "seconds": ...} on success (the final upload's URL).
import fs from 'node:fs';
import * as tus from 'tus-js-client';

const [endpoint, path, headers, metadata, parallel, chunk] = process.argv.slice(2);
const started = process.hrtime.bigint();
const upload = new tus.Upload(fs.readFileSync(path), {
  endpoint,
  headers: JSON.parse(headers),
  parallelUploads: Number(parallel),
  chunkSize: chunk ? Number(chunk) : Infinity,
  retryDelays: [0, 1000, 3000, 5000],
  metadata: JSON.parse(metadata),
  onError: (error) => {
    console.error(String(error));
    process.exit(1);
  },
  onSuccess: () => {
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    console.log(JSON.stringify({ url: upload.url, seconds }));
  },
});
upload.start();
