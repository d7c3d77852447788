//! RFC 3986 percent-encoding, as SigV4 query strings and AWS custom-authorizer user names
//! need it: everything but `A-Z a-z 0-9 - _ . ~` is encoded, with upper-case hex.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// The characters RFC 3986 leaves unencoded.
pub const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes `s` (UTF-8) for a URI query component.
#[must_use]
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn only_unreserved_characters_stay() {
        assert_eq!(
            super::encode("a-b_c.d~e f+g/h=i"),
            "a-b_c.d~e%20f%2Bg%2Fh%3Di"
        );
        assert_eq!(super::encode("é"), "%C3%A9");
    }
}
