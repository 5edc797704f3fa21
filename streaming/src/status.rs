//! The outcome of an exec/attach as Kubernetes reports it on the error stream: a
//! `metav1.Status` (JSON for protocol v4 and later, only the failure message before).
//! Runs in cairnd (its streaming server).

use serde::Serialize;

use crate::StreamError;

/// `metav1.Status`, with the fields the streaming protocol uses, in Go's field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    metadata: Empty,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "is_zero")]
    code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Empty {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Details {
    causes: Vec<Cause>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Cause {
    /// `StatusCause.Type`, whose JSON name is `reason`.
    #[serde(rename = "reason", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    message: String,
}

fn is_zero(code: &u16) -> bool {
    *code == 0
}

/// `metav1.StatusReason` for a nonzero exit code (`remotecommand.NonZeroExitCodeReason`).
pub const NON_ZERO_EXIT_CODE: &str = "NonZeroExitCode";
/// `remotecommand.ExitCodeCauseType`.
pub const EXIT_CODE_CAUSE: &str = "ExitCode";

impl Status {
    pub fn success() -> Status {
        Status {
            metadata: Empty {},
            status: "Success",
            message: None,
            reason: None,
            details: None,
            code: 0,
        }
    }

    /// The command ran and exited with `code` (0 is success).
    pub fn exit_code(code: i32) -> Status {
        if code == 0 {
            return Status::success();
        }
        Status {
            metadata: Empty {},
            status: "Failure",
            message: Some(format!(
                "command terminated with non-zero exit code: exit status {code}"
            )),
            reason: Some(NON_ZERO_EXIT_CODE),
            details: Some(Details {
                causes: vec![Cause {
                    kind: Some(EXIT_CODE_CAUSE),
                    message: code.to_string(),
                }],
            }),
            code: 0,
        }
    }

    /// The runtime failed; `doing` says what the server asked of it.
    pub fn error(doing: &str, err: &StreamError) -> Status {
        let detail = format!("{doing}: {err}");
        let (reason, code, message) = match err {
            StreamError::NotFound(_) => ("NotFound", 404, detail.clone()),
            StreamError::InvalidArgument(_) => ("BadRequest", 400, detail.clone()),
            _ => (
                "InternalError",
                500,
                format!("Internal error occurred: {detail}"),
            ),
        };
        Status {
            metadata: Empty {},
            status: "Failure",
            message: Some(message),
            reason: Some(reason),
            details: Some(Details {
                causes: vec![Cause {
                    kind: None,
                    message: detail,
                }],
            }),
            code,
        }
    }

    pub fn is_success(&self) -> bool {
        self.status == "Success"
    }

    /// The JSON form (protocol v4 and later).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| br#"{"status":"Failure"}"#.to_vec())
    }

    /// What a pre-v4 client gets: the failure message alone, nothing on success.
    pub fn to_text(&self) -> Vec<u8> {
        if self.is_success() {
            return Vec::new();
        }
        self.message.clone().unwrap_or_default().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_matches_kubernetes() {
        assert_eq!(
            String::from_utf8(Status::success().to_json()).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        assert_eq!(
            String::from_utf8(Status::exit_code(3).to_json()).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        let err = Status::error(
            "error executing command in container",
            &StreamError::other("boom"),
        );
        assert_eq!(
            String::from_utf8(err.to_json()).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: error executing command in container: boom","reason":"InternalError","details":{"causes":[{"message":"error executing command in container: boom"}]},"code":500}"#
        );
        let missing = Status::error(
            "error attaching to container",
            &StreamError::not_found("no c1"),
        );
        assert!(String::from_utf8(missing.to_json())
            .unwrap()
            .contains(r#""code":404"#));
    }

    #[test]
    fn text_form_only_reports_failures() {
        assert!(Status::success().to_text().is_empty());
        assert!(Status::exit_code(0).to_text().is_empty());
        assert_eq!(
            String::from_utf8(Status::exit_code(2).to_text()).unwrap(),
            "command terminated with non-zero exit code: exit status 2"
        );
    }
}
