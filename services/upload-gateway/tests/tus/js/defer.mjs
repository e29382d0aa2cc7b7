// Uploads a stream of unknown length with tus-js-client's `uploadLengthDeferred` (tus
// creation-defer-length): the file is read through a PassThrough, so the client knows no size
// and sends Upload-Length with the PATCH that reaches the stream's end.
// Usage: node defer.mjs ENDPOINT FILE HEADERS_JSON
// Prints one JSON line per response ({"method", "status", "offset"}), then {"done": true, "url"}.
import fs from 'node:fs';
import { PassThrough } from 'node:stream';

import { uploadReported } from './reported.mjs';

const [endpoint, path, headers] = process.argv.slice(2);
uploadReported(fs.createReadStream(path).pipe(new PassThrough()), headers, {
  endpoint,
  uploadLengthDeferred: true,
  metadata: { filename: 'clip.mp4', filetype: 'video/mp4' },
});
