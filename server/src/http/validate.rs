//! Field validation for request bodies. Every failure is a 422 naming the field.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer};

use super::ApiError;

/// A required display string: trimmed, 1 to `max` characters, no control characters.
pub(super) fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    optional_text(field, value, max)
}

/// Like [`text`] but may be empty.
pub(super) fn optional_text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let value = value.trim();
    if value.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// An email address (a plausibility check: one `@`, something either side, no spaces).
pub(super) fn email(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim().to_lowercase();
    let valid = value.len() <= 254
        && value.split('@').count() == 2
        && value.split('@').all(|part| !part.is_empty())
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(ApiError::invalid(field, "must be an email address"));
    }
    Ok(value)
}

/// A control-plane password.
pub(super) fn password(field: &str, value: &str, min: usize) -> Result<(), ApiError> {
    let length = value.chars().count();
    if length < min {
        return Err(ApiError::invalid(
            field,
            format!("must be at least {min} characters"),
        ));
    }
    if length > 256 {
        return Err(ApiError::invalid(field, "must be at most 256 characters"));
    }
    Ok(())
}

/// A SIP digest password: 8 to 128 printable ASCII characters.
pub(super) fn sip_password(field: &str, value: &str) -> Result<(), ApiError> {
    if !(8..=128).contains(&value.len()) {
        return Err(ApiError::invalid(field, "must be 8 to 128 characters"));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            field,
            "must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

/// An extension number: 2 to 15 digits.
pub(super) fn extension_number(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if !(2..=15).contains(&value.len()) || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid(field, "must be 2 to 15 digits"));
    }
    Ok(value.to_owned())
}

/// A DNS name or IP address.
pub(super) fn host(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim().to_lowercase();
    if value.parse::<IpAddr>().is_ok() {
        return Ok(value);
    }
    let valid = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(ApiError::invalid(
            field,
            "must be a host name or IP address",
        ));
    }
    Ok(value)
}

/// A SIP domain (a host name or IP address).
pub(super) fn sip_domain(field: &str, value: &str) -> Result<String, ApiError> {
    host(field, value)
}

/// An IP address, CIDR block or host name that inbound calls may come from.
pub(super) fn source(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if let Some((address, prefix)) = value.split_once('/') {
        let address: IpAddr = address
            .parse()
            .map_err(|_| ApiError::invalid(field, format!("`{value}` is not a CIDR block")))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        match prefix.parse::<u8>() {
            Ok(bits) if bits <= max => return Ok(value.to_owned()),
            _ => {
                return Err(ApiError::invalid(
                    field,
                    format!("`{value}` has a bad prefix length"),
                ));
            }
        }
    }
    host(field, value).map_err(|_| {
        ApiError::invalid(
            field,
            format!("`{value}` is not an address, CIDR or host name"),
        )
    })
}

/// SIP headers a trunk's custom headers may not set: we own them.
const RESERVED_HEADERS: &[&str] = &[
    "via",
    "v",
    "from",
    "f",
    "to",
    "t",
    "call-id",
    "i",
    "cseq",
    "contact",
    "m",
    "max-forwards",
    "content-length",
    "l",
    "content-type",
    "c",
    "route",
    "record-route",
    "authorization",
    "proxy-authorization",
    "www-authenticate",
    "proxy-authenticate",
];

/// A custom SIP header: a token name (RFC 3261 §25.1) that is not one we manage, and a value
/// without line breaks.
pub(super) fn header(field: &str, name: &str, value: &str) -> Result<(), ApiError> {
    let token = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b));
    if !token {
        return Err(ApiError::invalid(
            field,
            format!("`{name}` is not a valid header name"),
        ));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(ApiError::invalid(
            field,
            format!("`{name}` is set by Switchboard and cannot be overridden"),
        ));
    }
    if value.len() > 512 || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("the value of `{name}` must be at most 512 characters without line breaks"),
        ));
    }
    Ok(())
}

/// For PATCH bodies: distinguishes an absent field (`None`) from an explicit `null`
/// (`Some(None)`). Use with `#[serde(default, deserialize_with = "double_option")]`.
pub(super) fn double_option<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A caller ID number (`caller_id_number`), normalised to E.164 (`+1…`, `1…` and national
/// forms are accepted).
pub(super) fn caller_id_number(value: Option<String>) -> Result<Option<String>, ApiError> {
    value
        .map(|n| {
            switchboard_signalling::e164::normalize(&n)
                .map_err(|e| ApiError::invalid("caller_id_number", e))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        assert_eq!(email("e", " Bob@Example.COM ").unwrap(), "bob@example.com");
        for bad in ["", "bob", "a@b@c", "@b", "a@", "a b@c"] {
            assert!(email("e", bad).is_err(), "{bad}");
        }
        assert_eq!(extension_number("n", "1001").unwrap(), "1001");
        for bad in ["1", "10a1", "+1001", "1234567890123456"] {
            assert!(extension_number("n", bad).is_err(), "{bad}");
        }
        assert_eq!(host("h", "SIP.Telnyx.com").unwrap(), "sip.telnyx.com");
        assert!(host("h", "2001:db8::1").is_ok());
        for bad in ["", "a..b", "-a.com", "a_b.com", "x y"] {
            assert!(host("h", bad).is_err(), "{bad}");
        }
        for good in [
            "192.0.2.0/24",
            "2001:db8::/32",
            "192.0.2.1",
            "sip.telnyx.com",
        ] {
            assert!(source("s", good).is_ok(), "{good}");
        }
        for bad in ["192.0.2.0/33", "x/24", "192.0.2.0/-1"] {
            assert!(source("s", bad).is_err(), "{bad}");
        }
        assert!(header("h", "X-Telnyx-Username", "acme").is_ok());
        assert!(header("h", "Via", "x").is_err());
        assert!(header("h", "X Bad", "x").is_err());
        assert!(header("h", "X-Ok", "a\r\nVia: evil").is_err());
        assert!(text("t", "   ", 10).is_err());
        assert!(text("t", "abc\u{7}", 10).is_err());
        assert!(text("t", "ééééé", 5).is_ok());
        assert!(sip_password("p", "short").is_err());
        assert!(sip_password("p", "has space in it").is_err());
        assert!(sip_password("p", "G00d-secret").is_ok());
    }
}
