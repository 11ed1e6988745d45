//! E.164 numbers (ITU-T E.164): `+` followed by a country code and subscriber number, at most
//! 15 digits in all.
//!
//! Carriers and phones present the same number in several forms. [`normalize`] maps the forms
//! a North American trunk such as Telnyx sends (`+15551234567`, `15551234567`, `5551234567`)
//! and the usual punctuation (`+1 (555) 123-4567`) to one canonical form, so that a DID matches
//! whichever form arrives.

/// Why a number was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Something other than digits, `+` and punctuation.
    #[error("a phone number may contain only digits, a leading `+`, spaces and ()-.")]
    InvalidCharacter,
    /// Too few or too many digits.
    #[error("an E.164 number has 8 to 15 digits after the `+`")]
    BadLength,
    /// A country code cannot start with 0.
    #[error("a country code cannot start with 0")]
    LeadingZero,
}

/// Normalises `input` to `+<digits>`.
///
/// - `+<8..=15 digits>` is kept as it is (punctuation removed);
/// - 11 digits starting with `1` become `+1…` (North American with trunk prefix);
/// - 10 digits become `+1…` (North American national form);
/// - anything else without `+` is refused: without a country we cannot tell.
pub fn normalize(input: &str) -> Result<String, Error> {
    let trimmed = input.trim();
    let (plus, rest) = match trimmed.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let mut digits = String::with_capacity(16);
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return Err(Error::InvalidCharacter),
        }
    }
    let national = !plus && (digits.len() == 10 || (digits.len() == 11 && digits.starts_with('1')));
    if national {
        let subscriber = if digits.len() == 11 {
            &digits[1..]
        } else {
            &digits[..]
        };
        return Ok(format!("+1{subscriber}"));
    }
    if !plus || !(8..=15).contains(&digits.len()) {
        return Err(Error::BadLength);
    }
    if digits.starts_with('0') {
        return Err(Error::LeadingZero);
    }
    Ok(format!("+{digits}"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn north_american_forms_agree() {
        for form in [
            "+15551234567",
            "15551234567",
            "5551234567",
            "+1 (555) 123-4567",
            " 555.123.4567 ",
        ] {
            assert_eq!(normalize(form).as_deref(), Ok("+15551234567"), "{form}");
        }
    }

    #[test]
    fn international_kept_and_junk_refused() {
        assert_eq!(normalize("+442071838750").as_deref(), Ok("+442071838750"));
        assert_eq!(normalize("+4420"), Err(Error::BadLength));
        assert_eq!(normalize("+1234567890123456"), Err(Error::BadLength));
        assert_eq!(normalize("442071838750"), Err(Error::BadLength));
        assert_eq!(normalize("+0123456789"), Err(Error::LeadingZero));
        assert_eq!(normalize("+1555abc4567"), Err(Error::InvalidCharacter));
        assert_eq!(normalize(""), Err(Error::BadLength));
    }

    proptest! {
        #[test]
        fn normalizing_is_idempotent(input in "\\PC{0,20}") {
            if let Ok(once) = normalize(&input) {
                prop_assert_eq!(normalize(&once), Ok(once.clone()));
                prop_assert!(once.starts_with('+') && once[1..].bytes().all(|b| b.is_ascii_digit()));
            }
        }
    }
}
