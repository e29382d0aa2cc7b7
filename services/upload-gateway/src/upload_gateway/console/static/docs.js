// The /docs page: Swagger UI (bundled into /docs/swagger-ui.js as `RawDriveDocs`) over this
// gateway's own OpenAPI document. "Authorize" takes a user token; "Try it out" calls this gateway.
const { SwaggerUIBundle } = window.RawDriveDocs;

window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  // No "validator.swagger.io" badge: it would send the document to a third party.
  validatorUrl: null,
});
