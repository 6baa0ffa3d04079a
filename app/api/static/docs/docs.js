// Renders the OpenAPI document with Swagger UI. Kept out of the page so the Content-Security-Policy needs no
// 'unsafe-inline'; validatorUrl is null so the page never calls the public validator.
window.addEventListener("DOMContentLoaded", function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    displayOperationId: true,
    defaultModelsExpandDepth: 0,
  });
});
