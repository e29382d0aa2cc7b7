// Uploads one file with tus-js-client given the session's upload_url either as `endpoint` (tus
// creation first) or as `uploadUrl` (what a client that stored the URL resumes from).
// Usage: node resume.mjs endpoint|uploadUrl URL FILE HEADERS_JSON
// Prints one JSON line per response ({"method", "status", "offset"}), then {"done": true, "url"}.
import fs from 'node:fs';
import * as tus from 'tus-js-client';

const [option, url, path, headers] = process.argv.slice(2);
const upload = new tus.Upload(fs.readFileSync(path), {
  [option]: url,
  headers: JSON.parse(headers),
  chunkSize: 5 * 1024 * 1024,
  retryDelays: [0, 1000, 3000, 5000],
  metadata: { filename: 'photo.jpg', filetype: 'image/jpeg' },
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
  onSuccess: () => console.log(JSON.stringify({ done: true, url: upload.url })),
});
upload.start();
