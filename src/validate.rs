//! Small input checks shared by the domain modules, each answering a 400
//! that names the field.

use crate::error::{Error, Result};

/// A free-text reference (id, key, causation id…): non-empty, at most `max`
/// bytes, no control characters.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid_field(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(Error::invalid_field(
            field,
            format!("must be at most {max} bytes, got {}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid_field(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// An optional number that, when given, lies in `min..=max`.
pub fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: Option<T>,
    min: T,
    max: T,
) -> Result<()> {
    match value {
        Some(v) if !(v >= min && v <= max) => Err(Error::invalid_field(
            field,
            format!("must be between {min} and {max}"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text() {
        assert!(check_text("f", "ok", 2).is_ok());
        assert!(check_text("f", "", 2).is_err());
        assert!(check_text("f", "abc", 2).is_err());
        assert!(check_text("f", "a\tb", 8).is_err());
    }

    #[test]
    fn ranges() {
        assert!(check_range("f", None, 1, 2).is_ok());
        assert!(check_range("f", Some(2), 1, 2).is_ok());
        assert!(check_range("f", Some(3), 1, 2).is_err());
        assert!(check_range("f", Some(f64::NAN), 0.0, 1.0).is_err());
    }
}
