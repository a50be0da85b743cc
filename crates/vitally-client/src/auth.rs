//! The two auth schemes: Analytics sends the key as Vitally shows it; REST sends
//! `base64("<token>:")`, which Vitally's UI also shows ready-made.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// The `Authorization` header value for the Analytics API.
pub fn analytics_header(key: &str) -> String {
    format!("Basic {key}")
}

/// The `Authorization` header value for the REST API, from the raw secret token or
/// from the ready-made value a user pasted (the part after `Basic `).
pub fn rest_header(token: &str) -> String {
    if is_ready_made(token) {
        format!("Basic {token}")
    } else {
        format!("Basic {}", STANDARD.encode(format!("{token}:")))
    }
}

/// A ready-made value is base64 of `<token>:`. A raw token decoding to text that
/// ends in `:` by chance is practically impossible.
fn is_ready_made(value: &str) -> bool {
    STANDARD
        .decode(value)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .is_some_and(|text| text.len() > 1 && text.ends_with(':') && !text.chars().any(char::is_control))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_raw_token_and_ready_made_value_give_the_same_header() {
        let ready = STANDARD.encode("sk_live_123:");
        assert_eq!(rest_header("sk_live_123"), format!("Basic {ready}"));
        assert_eq!(rest_header(&ready), format!("Basic {ready}"));
    }

    #[test]
    fn analytics_key_is_sent_as_given() {
        assert_eq!(analytics_header("abc=="), "Basic abc==");
    }
}
