// Swagger UI for the gateway's /docs page, bundled by esbuild into ../static/vendor/swagger-ui.{js,css}
// (global `RawDriveDocs`), so the page loads nothing from a CDN. The prebuilt browser bundle of
// swagger-ui-dist, not its index.js (which requires Node's `path`).
import SwaggerUIBundle from "swagger-ui-dist/swagger-ui-bundle.js";
import "swagger-ui-dist/swagger-ui.css";

export { SwaggerUIBundle };
