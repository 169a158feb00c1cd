"""The OpenAPI 3.0 document of the HTTP API, served at /api/v1/openapi.json (prose in docs/api.md)."""

from __future__ import annotations

from exporter import __version__
from exporter.ingest import columnar, schema
from exporter.ingest.schema import json_schema
from exporter.ingest.validation import REASONS

# The items are the ingest schema's (exporter/ingest/schema.py), so the document cannot drift from what the
# validator and the fast decoder accept.
PREDICTION = json_schema(schema.PREDICTION)
LABEL = json_schema(schema.LABEL)
RESOURCE_REPORT = json_schema(schema.RESOURCES)
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "name", "message"],
            "properties": {
                "code": {"type": "integer"},
                "name": {"type": "string"},
                "message": {"type": "string"},
                "details": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["index", "field", "reason", "message"],
                        "properties": {
                            "index": {
                                "type": "integer",
                                "description": "Index of the item in the batch (0 for a single object).",
                            },
                            "field": {"type": "string"},
                            "reason": {"type": "string", "enum": list(REASONS)},
                            "message": {"type": "string"},
                        },
                    },
                },
            },
        }
    },
}
ACCEPTED = {
    "type": "object",
    "required": ["accepted"],
    "properties": {"accepted": {"type": "integer"}, "duplicates": {"type": "integer"}},
}


MODEL = {
    "type": "object",
    "required": ["name", "task", "classes", "features", "pending_labels", "early_labels", "versions"],
    "properties": {
        "name": {"type": "string"},
        "task": {"type": "string", "enum": ["binary", "multiclass", "regression"]},
        "classes": {"type": "array", "items": {"type": "string"}, "description": "[] for regression."},
        "features": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "type"],
                "properties": {
                    "name": {"type": "string"},
                    "type": {"type": "string", "enum": ["numeric", "categorical"]},
                },
            },
        },
        "pending_labels": {"type": "integer", "minimum": 0},
        "early_labels": {"type": "integer", "minimum": 0},
        "versions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "version",
                    "predictions",
                    "labels",
                    "last_prediction_timestamp",
                    "last_label_timestamp",
                    "windows",
                ],
                "properties": {
                    "version": {"type": "string"},
                    "predictions": {"type": "integer", "minimum": 0},
                    "labels": {"type": "integer", "minimum": 0},
                    "last_prediction_timestamp": {"type": "number", "nullable": True},
                    "last_label_timestamp": {"type": "number", "nullable": True},
                    "windows": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "required": ["predictions", "labeled"],
                            "properties": {
                                "predictions": {"type": "integer", "minimum": 0},
                                "labeled": {"type": "integer", "minimum": 0},
                            },
                        },
                    },
                },
            },
        },
    },
}
REFERENCE_RESULT = {
    "type": "object",
    "required": ["model", "rows", "features"],
    "properties": {
        "model": {"type": "string"},
        "rows": {"type": "integer"},
        "features": {"type": "integer"},
        "calibration": {
            "type": "object",
            "description": "What the estimated quality rests on: method isotonic or none with the reference "
            "rows and expected calibration errors, or method null and a note saying why there is no estimate.",
            "properties": {
                "method": {"type": "string", "nullable": True, "enum": ["isotonic", "none", None]},
                "rows": {"type": "integer"},
                "ece_raw": {"type": "number"},
                "ece_calibrated": {"type": "number"},
                "note": {"type": "string"},
            },
        },
    },
}
STATUS = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string"},
        "problems": {"type": "array", "items": {"type": "string"}},
    },
    "description": "Health and readiness answers: not the Error shape.",
}


def _json(schema: str, description: str = "OK") -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before sending the same request again.",
        "schema": {"type": "integer"},
    }
}


def _error_responses(*codes: int, text: dict[int, str] | None = None) -> dict:
    text = {
        400: "Invalid input; nothing was accepted.",
        404: "Unknown model.",
        409: "A request with this Idempotency-Key is still being applied; retry after Retry-After.",
        413: "Body or batch too large.",
        422: "This Idempotency-Key was used with another body.",
        429: "Too many reporters.",
        503: "Not ready.",
        **(text or {}),
    }
    out = {}
    for c in codes:
        out[str(c)] = {
            "description": text[c],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        if c in (409, 429, 503):
            out[str(c)]["headers"] = _RETRY_AFTER
    return out


def _ingest(item: str, key: str, summary: str) -> dict:
    ref = {"$ref": f"#/components/schemas/{item}"}
    return {
        "post": {
            "summary": summary,
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "A unique value per body, the same on every retry of it: the body is applied "
                    "once however often it arrives (docs/api.md#retries-and-idempotency-key).",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                ref,
                                {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": [key],
                                    "properties": {key: {"type": "array", "minItems": 1, "items": ref}},
                                },
                            ]
                        }
                    },
                    # The same batch as columns (docs/api.md#columnar-batches).
                    columnar.JSON_COLUMNS: {"schema": {"$ref": f"#/components/schemas/{item}Columns"}},
                    columnar.ARROW_STREAM: {
                        "schema": {
                            "type": "string",
                            "format": "binary",
                            "description": "An Apache Arrow IPC stream of the same columns (features.<name>, "
                            "scores.<class>...), the batch-wide fields in the schema's metadata; uncompressed.",
                        }
                    },
                },
            },
            "responses": {
                "202": {
                    "description": "Accepted (journalled before this answer); Idempotent-Replayed: true when it "
                    "answers a retry of a request applied before.",
                    "headers": {
                        "Idempotent-Replayed": {
                            "description": "true when this is the first answer again.",
                            "schema": {"type": "string", "enum": ["true"]},
                        }
                    },
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
                },
                **_error_responses(
                    400,
                    404,
                    409,
                    413,
                    422,
                    429,
                    503,
                    text={
                        429: "Ingest is busy or the journal is full; nothing was kept; retry after Retry-After.",
                        503: "The journal or the shared join store is unavailable; nothing was kept; retry after "
                        "Retry-After.",
                    },
                ),
            },
        }
    }


def _document() -> dict:
    json_ok = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "mlmon exporter API",
            "version": __version__,
            "description": "Send predictions and their delayed labels; Prometheus scrapes /metrics. See docs/api.md.",
        },
        "paths": {
            "/api/v1/predictions": _ingest("Prediction", "predictions", "Send one prediction or a batch."),
            "/api/v1/labels": _ingest("Label", "labels", "Send one label or a batch; joined to predictions by id."),
            "/api/v1/resources": {
                "post": {
                    "summary": "Report a model server's resource usage (sent by the Python client).",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ResourceReport"}}},
                    },
                    "responses": {"202": _json("Accepted", "Accepted."), **_error_responses(400, 413, 429)},
                }
            },
            "/api/v1/models": {
                "get": {
                    "summary": "Configured models with their versions, counts, pending labels and window sample sizes.",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["models"],
                                        "properties": {
                                            "models": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}
                                        },
                                    }
                                }
                            },
                        }
                    },
                }
            },
            "/api/v1/models/{name}": {
                "get": {
                    "summary": "One model.",
                    "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": _json("Model"), **_error_responses(404)},
                }
            },
            "/api/v1/models/{name}/reference": {
                "put": {
                    "summary": "Replace the model's reference: a CSV of raw rows (text/csv) or a profile from "
                    "`mlmon reference build` (application/json). Drift windows restart from zero.",
                    "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "text/csv": {"schema": {"type": "string"}},
                            "application/json": {"schema": {"type": "object"}},
                        },
                    },
                    "responses": {"200": _json("ReferenceResult"), **_error_responses(400, 404, 413)},
                }
            },
            "/api/v1/models/{name}/reset": {
                "post": {
                    "summary": "Forget the model's windows, counters and waiting predictions; its reference stays.",
                    "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "200": {
                            "description": "Reset.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["model", "reset"],
                                        "properties": {"model": {"type": "string"}, "reset": {"type": "boolean"}},
                                    }
                                }
                            },
                        },
                        **_error_responses(404),
                    },
                }
            },
            "/api/v1/openapi.json": {"get": {"summary": "This document.", "responses": {"200": json_ok}}},
            "/healthz": {
                "get": {
                    "summary": "Liveness.",
                    "responses": {
                        "200": _json("Status"),
                        "503": _json("Status", "Unhealthy: the problems are listed."),
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness.",
                    "responses": {"200": _json("Status"), "503": _json("Status", "Shutting down.")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (text or OpenMetrics).",
                    "responses": {
                        "200": {
                            "description": "Metrics: Prometheus text 0.0.4, or OpenMetrics 1.0.0 when asked for.",
                            "content": {
                                "text/plain": {"schema": {"type": "string"}},
                                "application/openmetrics-text": {"schema": {"type": "string"}},
                            },
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from the config's auth.tokens, scoped to models and actions "
                    "(docs/security.md). Not needed when authentication is off.",
                }
            },
            "schemas": {
                "Prediction": PREDICTION,
                "Label": LABEL,
                "PredictionColumns": schema.columnar_json_schema(schema.PREDICTION),
                "LabelColumns": schema.columnar_json_schema(schema.LABEL),
                "ResourceReport": RESOURCE_REPORT,
                "Error": ERROR,
                "Accepted": ACCEPTED,
                "Model": MODEL,
                "ReferenceResult": REFERENCE_RESULT,
                "Status": STATUS,
            },
        },
    }


# The operations that need a bearer token when authentication is on (exporter/serve/app.py ENDPOINT_ACTIONS).
SECURED = {
    ("/api/v1/predictions", "post"): "write",
    ("/api/v1/labels", "post"): "write",
    ("/api/v1/resources", "post"): "write",
    ("/api/v1/models", "get"): "read",
    ("/api/v1/models/{name}", "get"): "read",
    ("/api/v1/models/{name}/reference", "put"): "admin",
    ("/api/v1/models/{name}/reset", "post"): "admin",
}


def openapi_document() -> dict:
    """The OpenAPI document: the operations, plus bearer security, 401 and 403 where a token is needed."""
    doc = _document()
    for (path, method), action in SECURED.items():
        op = doc["paths"][path][method]
        # Either a bearer token or none: authentication can be off (auth.tokens not configured).
        op["security"] = [{"bearer": []}, {}]
        op["description"] = (op.get("description", "") + f" Needs a token with the `{action}` action.").strip()
        op["responses"].update(
            {
                "401": {
                    "description": "No valid bearer token (authentication is on).",
                    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
                "403": {
                    "description": f"The token may not {action} this model.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            }
        )
    return doc
