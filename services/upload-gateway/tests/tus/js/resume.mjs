// Uploads one file with tus-js-client given the session's upload_url either as `endpoint` (tus
// creation first) or as `uploadUrl` (what a client that stored the URL resumes from).
// Usage: node resume.mjs endpoint|uploadUrl URL FILE HEADERS_JSON
// Prints one JSON line per response ({"method", "status", "offset"}), then {"done": true, "url"}.
import fs from 'node:fs';

import { uploadReported } from './reported.mjs';

const [option, url, path, headers] = process.argv.slice(2);
uploadReported(fs.readFileSync(path), headers, {
  [option]: url,
  metadata: { filename: 'photo.jpg', filetype: 'image/jpeg' },
});
