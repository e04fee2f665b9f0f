//! Channel names: the API's name grammar (`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`),
//! so a name is safe inside a key's hash tag.

use std::fmt;

use crate::names::{Name, NameError, validate};

/// A validated channel name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelName(String);

impl Name for ChannelName {
    const KIND: &'static str = "channel";

    fn parse(s: &str) -> Result<Self, NameError> {
        validate(s).map(|()| Self(s.to_owned()))
    }
}

impl ChannelName {
    /// Validates `s` and wraps it.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        <Self as Name>::parse(s)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
