//! Small validation rules shared by several aggregates (spec: management-api.md §1, §3.4).

/// `^[A-Za-z0-9_.\-:]{1,128}$`: the shape of every path identifier and request id.
pub fn is_valid_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'))
}

/// `^[\p{L}\p{N} @._+:'-]{1,256}$`: the `x-caracal-authorized-by` attribution header.
pub fn is_valid_attribution(s: &str) -> bool {
    let n = s.chars().count();
    (1..=256).contains(&n)
        && s.chars().all(|c| {
            c.is_alphabetic()
                || c.is_numeric()
                || matches!(c, ' ' | '@' | '.' | '_' | '+' | ':' | '\'' | '-')
        })
}

/// Reserved-namespace prefixes (§3.4); compared case-insensitively on the trimmed value.
pub const RESERVED_ZONE_NAME_PREFIX: &str = "caracal.sys/";
pub const RESERVED_ZONE_SLUG_PREFIX: &str = "caracal-sys-";

pub fn has_prefix_ci(value: &str, prefix: &str) -> bool {
    let v = value.trim();
    v.len() >= prefix.len()
        && v.is_char_boundary(prefix.len())
        && v[..prefix.len()].eq_ignore_ascii_case(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_the_path_pattern() {
        assert!(is_valid_identifier("0198c2d4-5e1f-7a30-9c11-2b7d4e6f8a90"));
        assert!(is_valid_identifier("provider-none-z1:a_b.c"));
        assert!(!is_valid_identifier(""));
        assert!(!is_valid_identifier("a/b"));
        assert!(!is_valid_identifier(&"a".repeat(129)));
    }

    #[test]
    fn reserved_prefix_is_case_insensitive_and_trimmed() {
        assert!(has_prefix_ci(
            "  CARACAL.SYS/ops",
            RESERVED_ZONE_NAME_PREFIX
        ));
        assert!(!has_prefix_ci("caracal.system", RESERVED_ZONE_NAME_PREFIX));
        assert!(!has_prefix_ci("é", RESERVED_ZONE_NAME_PREFIX));
    }

    #[test]
    fn attribution_header_pattern() {
        assert!(is_valid_attribution("ops@example.com"));
        assert!(is_valid_attribution("Zoë O'Neil"));
        assert!(!is_valid_attribution("a\nb"));
        assert!(!is_valid_attribution(""));
    }
}
