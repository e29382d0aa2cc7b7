// The upload resume.mjs and stall.mjs run: tus-js-client with the session's headers, 5 MiB
// chunks and its default retry delays (spelt out), reporting as the tests read it: one JSON line
// per response ({"method", "status", "offset"}), then {"done": true, "url"}; an error on stderr,
// exit status 1.
import fs from 'node:fs';
import * as tus from 'tus-js-client';

export function uploadReported(path, headers, options) {
  const upload = new tus.Upload(fs.readFileSync(path), {
    headers: JSON.parse(headers),
    chunkSize: 5 * 1024 * 1024,
    retryDelays: [0, 1000, 3000, 5000],
    ...options,
    onAfterResponse: (req, res) => {
      const offset = res.getHeader('Upload-Offset');
      console.log(JSON.stringify({
        method: req.getMethod(), status: res.getStatus(), offset: offset === undefined ? null : Number(offset),
      }));
    },
    onError: (error) => {
      console.error(String(error));
      process.exit(1);
    },
    onSuccess: () => {
      console.log(JSON.stringify({ done: true, url: upload.url }));
      process.exit(0); // a request left hanging (stall.mjs's frozen one) would keep Node running
    },
  });
  upload.start();
}
