// Uploads one file with tus-js-client exactly as the seed's front end configures it.
// Usage: node upload.mjs ENDPOINT FILE HEADERS_JSON; prints {"url": ...} on success.
import fs from 'node:fs';
import * as tus from 'tus-js-client';

const [endpoint, path, headers] = process.argv.slice(2);
const upload = new tus.Upload(fs.readFileSync(path), {
  endpoint,
  headers: JSON.parse(headers),
  chunkSize: 5 * 1024 * 1024,
  retryDelays: [0, 1000, 3000, 5000],
  metadata: { filename: 'photo.jpg', filetype: 'image/jpeg' },
  onError: (error) => {
    console.error(String(error));
    process.exit(1);
  },
  onSuccess: () => console.log(JSON.stringify({ url: upload.url })),
});
upload.start();
