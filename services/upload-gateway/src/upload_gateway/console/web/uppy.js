// The parts of Uppy the console uses, bundled by esbuild into ../static/vendor/uppy.{js,css}
// (global `RawDriveUppy`), so the page loads nothing from a CDN and works offline.
import Uppy from "@uppy/core";
import Dashboard from "@uppy/dashboard";
import Tus from "@uppy/tus";
import "@uppy/core/css/style.min.css";
import "@uppy/dashboard/css/style.min.css";

export { Dashboard, Tus, Uppy };
