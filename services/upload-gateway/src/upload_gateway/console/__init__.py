"""The upload console: a page at /console to drop files and folders into a workspace (Uppy, tus)
and watch its assets arrive live. Opt-in (RAWDRIVE_CONSOLE); the dev stack turns it on.

`routes` serves the page, its files and the live feed; `feed` is the feed's pure part; `static/`
holds the page, `web/` the npm project `make bootstrap` bundles Uppy from (into `static/vendor/`).
"""
