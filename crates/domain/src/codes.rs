//! The catalogue of error codes: every machine-readable `code` the API can answer with, in an
//! error body (`{"error":{"code",…}}`) or in a failed run's / node's `error.code`. Every crate's
//! [`crate::ErrorCode::code`] returns one of these; `docs/api.md` lists them ("Error codes").
//! The strings are a contract with clients: never change one, only add.

// --- Generic (one per HTTP status family) ----------------------------------------------------

/// 400: the request could not be understood.
pub const BAD_REQUEST: &str = "bad_request";
/// 401: no valid access token.
pub const UNAUTHORIZED: &str = "unauthorized";
/// 403: authenticated, but not allowed.
pub const FORBIDDEN: &str = "forbidden";
/// 404: no such resource (or not visible to the caller).
pub const NOT_FOUND: &str = "not_found";
/// 405: the route exists but not for this method.
pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
/// 409: the request conflicts with the current state (e.g. a unique name).
pub const CONFLICT: &str = "conflict";
/// 400 (413 when the server refuses before parsing): the body exceeds the configured limit.
pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
/// 400 (415 when the server refuses before parsing): the body is not `application/json`.
pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
/// 422: well-formed but invalid; `details` name the fields.
pub const VALIDATION_FAILED: &str = "validation_failed";
/// 429: too many requests (or a login lock-out); see Retry-After.
pub const RATE_LIMITED: &str = "rate_limited";
/// 422 (a stored count/byte quota) or 429 (a rate-like quota, with Retry-After).
pub const QUOTA_EXCEEDED: &str = "quota_exceeded";
/// 503: a dependency (database, pool) is unavailable right now.
pub const UNAVAILABLE: &str = "unavailable";
/// 503: the server is shutting down.
pub const SHUTTING_DOWN: &str = "shutting_down";
/// 500: an unexpected failure; only the request id is shown.
pub const INTERNAL: &str = "internal";

// --- Request syntax ---------------------------------------------------------------------------

/// 400: the body is not valid JSON.
pub const INVALID_JSON: &str = "invalid_json";
/// 400: the JSON body does not have the expected shape.
pub const INVALID_BODY: &str = "invalid_body";
/// 400: the query string cannot be parsed.
pub const INVALID_QUERY: &str = "invalid_query";
/// 400/422: the URL path (or a workspace path) is malformed.
pub const INVALID_PATH: &str = "invalid_path";
/// 400: a pagination cursor cannot be decoded.
pub const INVALID_CURSOR: &str = "invalid_cursor";
/// 400: a WebSocket route was called without an upgrade.
pub const WEBSOCKET_UPGRADE_REQUIRED: &str = "websocket_upgrade_required";

// --- Auth -------------------------------------------------------------------------------------

/// 401: wrong email or password.
pub const INVALID_CREDENTIALS: &str = "invalid_credentials";
/// 401: the token is invalid, expired or revoked.
pub const INVALID_TOKEN: &str = "invalid_token";
/// 409: the email is already registered.
pub const EMAIL_TAKEN: &str = "email_taken";

// --- Events -----------------------------------------------------------------------------------

/// 500: the events configuration is invalid (startup).
pub const INVALID_EVENTS_CONFIG: &str = "invalid_events_config";

// --- LLM providers ----------------------------------------------------------------------------

/// 422: the provider refused the configured key.
pub const PROVIDER_UNAUTHORIZED: &str = "provider_unauthorized";
/// 429: the provider asked to slow down.
pub const PROVIDER_RATE_LIMITED: &str = "provider_rate_limited";
/// 503: the provider's circuit breaker is open.
pub const PROVIDER_CIRCUIT_OPEN: &str = "provider_circuit_open";
/// 422/503: the provider answered with an error status.
pub const PROVIDER_ERROR: &str = "provider_error";
/// 503: the provider did not answer in time.
pub const PROVIDER_TIMEOUT: &str = "provider_timeout";
/// 503: the provider cannot be reached.
pub const PROVIDER_UNREACHABLE: &str = "provider_unreachable";
/// 503: the provider's answer cannot be understood.
pub const PROVIDER_MALFORMED_RESPONSE: &str = "provider_malformed_response";
/// 422: no provider is configured for the agent.
pub const PROVIDER_NOT_CONFIGURED: &str = "provider_not_configured";
/// 503: an agent's provider call failed.
pub const PROVIDER_FAILED: &str = "provider_failed";

// --- Pipelines and runs -----------------------------------------------------------------------

/// 422: the pipeline graph has a cycle.
pub const CYCLE_DETECTED: &str = "cycle_detected";
/// 409: the run has already finished.
pub const RUN_FINISHED: &str = "run_finished";
/// Run error: the run was cancelled.
pub const CANCELLED: &str = "cancelled";
/// Run error: the run kept crashing the executor and was given up.
pub const CRASH_LOOP: &str = "crash_loop";
/// Run/node error: the run or node exceeded its timeout.
pub const TIMED_OUT: &str = "timed_out";
/// Node error: the node was interrupted in its last attempt and again in its re-run.
pub const ATTEMPTS_EXHAUSTED: &str = "attempts_exhausted";
/// Node error: the node's target circuit breaker is open.
pub const CIRCUIT_OPEN: &str = "circuit_open";
/// Node error: the node's condition could not be evaluated.
pub const CONDITION_FAILED: &str = "condition_failed";
/// Node error: the node's type is unknown.
pub const INVALID_NODE: &str = "invalid_node";
/// Node error: a template in the node's parameters could not be rendered.
pub const TEMPLATE_FAILED: &str = "template_failed";
/// Node error: the rendered parameters exceed the size limit.
pub const PARAMS_TOO_LARGE: &str = "params_too_large";
/// Node/run error (422 for a tool call): the output exceeds the size limit.
pub const OUTPUT_TOO_LARGE: &str = "output_too_large";
/// Node error: the output is nested too deeply.
pub const OUTPUT_TOO_DEEP: &str = "output_too_deep";
/// Node error: the agent node's agent does not exist.
pub const AGENT_NOT_FOUND: &str = "agent_not_found";
/// Node error: the agent node's agent has no usable provider.
pub const AGENT_UNAVAILABLE: &str = "agent_unavailable";
/// Node error: the agent node's provider call failed.
pub const AGENT_FAILED: &str = "agent_failed";
/// Stored run/node error that cannot be decoded any more.
pub const UNREADABLE_VALUE: &str = "unreadable_value";

// --- Tools and workspace files ----------------------------------------------------------------

/// 403: the path is outside the allowed workspace.
pub const PATH_FORBIDDEN: &str = "path_forbidden";
/// 422: the tool ran and failed.
pub const TOOL_FAILED: &str = "tool_failed";
/// 422: the tool did not finish in time.
pub const TOOL_TIMEOUT: &str = "tool_timeout";
/// 422: the file exceeds the size limit.
pub const FILE_TOO_LARGE: &str = "file_too_large";
/// 422: the path is not a directory.
pub const NOT_A_DIRECTORY: &str = "not_a_directory";
/// 422: the path is not a file.
pub const NOT_A_FILE: &str = "not_a_file";
/// 422: the path is not a regular file (device, socket, …).
pub const NOT_A_REGULAR_FILE: &str = "not_a_regular_file";
/// 422: the file is not UTF-8 text.
pub const NOT_TEXT: &str = "not_text";

/// Every code above, for tests and docs.
pub const ALL: &[&str] = &[
    BAD_REQUEST,
    UNAUTHORIZED,
    FORBIDDEN,
    NOT_FOUND,
    METHOD_NOT_ALLOWED,
    CONFLICT,
    PAYLOAD_TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    VALIDATION_FAILED,
    RATE_LIMITED,
    QUOTA_EXCEEDED,
    UNAVAILABLE,
    SHUTTING_DOWN,
    INTERNAL,
    INVALID_JSON,
    INVALID_BODY,
    INVALID_QUERY,
    INVALID_PATH,
    INVALID_CURSOR,
    WEBSOCKET_UPGRADE_REQUIRED,
    INVALID_CREDENTIALS,
    INVALID_TOKEN,
    EMAIL_TAKEN,
    INVALID_EVENTS_CONFIG,
    PROVIDER_UNAUTHORIZED,
    PROVIDER_RATE_LIMITED,
    PROVIDER_CIRCUIT_OPEN,
    PROVIDER_ERROR,
    PROVIDER_TIMEOUT,
    PROVIDER_UNREACHABLE,
    PROVIDER_MALFORMED_RESPONSE,
    PROVIDER_NOT_CONFIGURED,
    PROVIDER_FAILED,
    CYCLE_DETECTED,
    RUN_FINISHED,
    CANCELLED,
    CRASH_LOOP,
    TIMED_OUT,
    ATTEMPTS_EXHAUSTED,
    CIRCUIT_OPEN,
    CONDITION_FAILED,
    INVALID_NODE,
    TEMPLATE_FAILED,
    PARAMS_TOO_LARGE,
    OUTPUT_TOO_LARGE,
    OUTPUT_TOO_DEEP,
    AGENT_NOT_FOUND,
    AGENT_UNAVAILABLE,
    AGENT_FAILED,
    UNREADABLE_VALUE,
    PATH_FORBIDDEN,
    TOOL_FAILED,
    TOOL_TIMEOUT,
    FILE_TOO_LARGE,
    NOT_A_DIRECTORY,
    NOT_A_FILE,
    NOT_A_REGULAR_FILE,
    NOT_TEXT,
];

#[cfg(test)]
mod tests {
    use super::ALL;

    #[test]
    fn every_code_is_lower_snake_case() {
        for code in ALL {
            let ok = !code.is_empty()
                && !code.starts_with('_')
                && !code.ends_with('_')
                && !code.contains("__")
                && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            assert!(ok, "{code} is not lower_snake_case");
        }
    }

    #[test]
    fn every_code_is_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ALL {
            assert!(seen.insert(*code), "{code} is listed twice");
        }
    }

    #[test]
    fn every_constant_of_the_module_is_in_all() {
        let src = include_str!("codes.rs");
        let declared = src
            .lines()
            .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \""))
            .count();
        assert_eq!(declared, ALL.len(), "a constant is missing from ALL");
    }
}
