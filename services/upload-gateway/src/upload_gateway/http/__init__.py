"""What the three capabilities share over HTTP: problem+json, body decoding, CORS, the access log, tracing, the route table and its OpenAPI document."""
