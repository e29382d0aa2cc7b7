// Uploads a stream of unknown length with tus-js-client's `uploadLengthDeferred` (tus
// creation-defer-length): the file is read through a PassThrough, so the client knows no size
// and sends Upload-Length with the PATCH that reaches the stream's end.
// Usage: node defer.mjs ENDPOINT FILE HEADERS_JSON; prints {"url": ...} on success.
import fs from 'node:fs';
import { PassThrough } from 'node:stream';
import * as tus from 'tus-js-client';

const [endpoint, path, headers] = process.argv.slice(2);
const stream = fs.createReadStream(path).pipe(new PassThrough());
const upload = new tus.Upload(stream, {
  endpoint,
  headers: JSON.parse(headers),
  uploadLengthDeferred: true,
  chunkSize: 5 * 1024 * 1024,
  retryDelays: [0, 1000, 3000, 5000],
  metadata: { filename: 'clip.mp4', filetype: 'video/mp4' },
  onError: (error) => {
    console.error(String(error));
    process.exit(1);
  },
  onSuccess: () => console.log(JSON.stringify({ url: upload.url })),
});
upload.start();
