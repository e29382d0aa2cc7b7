// Uploads one file with stock tus-js-client (default retry rules) from the session's upload_url
// (`uploadUrl`) over a link that freezes once: the first PATCH sends half its chunk, then nothing.
// Usage: node stall.mjs URL FILE HEADERS_JSON
// Prints one JSON line per response ({"method", "status", "offset"}), then {"done": true, "url"}.
import fs from 'node:fs';
import { Readable } from 'node:stream';
import * as tus from 'tus-js-client';

import { uploadReported } from './reported.mjs';

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
uploadReported(fs.readFileSync(path), headers, { uploadUrl: url, httpStack: freezingStack });
