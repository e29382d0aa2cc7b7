// The upload resume.mjs, stall.mjs and defer.mjs run: tus-js-client reading `file` (a Buffer, or
// a stream) with the given headers, 5 MiB chunks and its default retry delays (spelt out),
// reporting as the tests read it: one JSON line per response ({"method", "status", "offset"}),
// then {"done": true, "url"}; an error on stderr, exit status 1.
import * as tus from 'tus-js-client';

export function uploadReported(file, headers, options) {
  const upload = new tus.Upload(file, {
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
