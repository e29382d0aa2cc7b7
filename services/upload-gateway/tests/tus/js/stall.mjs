// Uploads one file with stock tus-js-client (default retry rules) from the session's upload_url
// (`uploadUrl`) over a link that freezes once: the first PATCH sends half its chunk, then nothing.
// Usage: node stall.mjs URL FILE HEADERS_JSON
// Prints one JSON line per response ({"method", "status", "offset"}), then {"done": true, "url"}.
import fs from 'node:fs';
import { Readable } from 'node:stream';
import * as tus from 'tus-js-client';

const [url, path, headers] = process.argv.slice(2);
const stack = new tus.DefaultHttpStack({});
let frozen = false;
const freezingStack = {
  getName: () => 'FreezingHttpStack',
  createRequest(method, requestUrl) {
    const request = stack.createRequest(method, requestUrl);
    if (method !== 'PATCH' || frozen) return request;
    frozen = true;
    const send = request.send.bind(request);
    request.send = (body) => {
      const half = new Readable({ read() {} }); // never ends: the link froze mid-body
      half.push(Buffer.from(body.subarray(0, body.length / 2)));
      return send(half);
    };
    return request;
  },
};
const upload = new tus.Upload(fs.readFileSync(path), {
  uploadUrl: url,
  headers: JSON.parse(headers),
  chunkSize: 5 * 1024 * 1024,
  retryDelays: [0, 1000, 3000, 5000],
  httpStack: freezingStack,
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
    process.exit(0); // the frozen request's socket would keep Node running until the gateway closes it
  },
});
upload.start();
