//! The canonical form of an e-mail address, applied at registration, login and admin
//! bootstrap, so that look-alike spellings of one address are one account.
//!
//! * The whole address is NFKC-normalised (full-width letters, ligatures, compatibility forms
//!   become their plain equivalents: `ａｄａ@ｅｘａｍｐｌｅ.ｃｏｍ` is `ada@example.com`).
//! * The domain is converted to ASCII with IDNA (UTS #46: case-folded, mapped, punycode):
//!   `Bücher.de` and `xn--bcher-kva.de` are one domain, stored as `xn--bcher-kva.de`.
//! * The local part is lower-cased too. RFC 5321 lets a server treat it case-sensitively, but
//!   practically no provider does, and two accounts differing only by case are an
//!   impersonation risk. Nothing else is rewritten in it: dots and `+tags` are provider-specific
//!   conventions, so `a.da+x@` stays distinct from `ada@`.
//! * The result must still pass [`Email::parse`] (length, one `@`, label syntax).

use gathering_domain::auth::{Email, InvalidEmail};
use unicode_normalization::UnicodeNormalization;

/// Input longer than this (in bytes) is refused before any normalisation work.
const MAX_RAW_BYTES: usize = 4 * Email::MAX_LEN;

/// The canonical [`Email`] for what a user typed.
pub fn normalize_email(raw: &str) -> Result<Email, InvalidEmail> {
    let s = raw.trim();
    if s.len() > MAX_RAW_BYTES {
        return Err(InvalidEmail("email is too long"));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(InvalidEmail(
            "email must not contain spaces or control characters",
        ));
    }
    let nfkc: String = s.nfkc().collect();
    let Some((local, domain)) = nfkc.rsplit_once('@') else {
        return Err(InvalidEmail("email must contain @"));
    };
    let local: String = local.to_lowercase().nfkc().collect();
    if domain.is_empty() {
        return Err(InvalidEmail("email domain is invalid"));
    }
    let domain =
        idna::domain_to_ascii(domain).map_err(|_| InvalidEmail("email domain is invalid"))?;
    if !domain.is_ascii() {
        return Err(InvalidEmail("email domain is invalid"));
    }
    Email::parse(&format!("{local}@{domain}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalize_email(s).unwrap().as_str().to_owned()
    }

    #[test]
    fn look_alike_spellings_collapse_to_one_address() {
        assert_eq!(n("Ada@Example.COM"), "ada@example.com");
        // Full-width letters and the full-width at sign.
        assert_eq!(n("ａｄａ＠ｅｘａｍｐｌｅ．ｃｏｍ"), "ada@example.com");
        // A ligature in the local part.
        assert_eq!(n("ﬁle@example.com"), "file@example.com");
        // Unicode domains become punycode, whatever their case.
        assert_eq!(n("ada@Bücher.de"), "ada@xn--bcher-kva.de");
        assert_eq!(n("ada@xn--bcher-kva.de"), "ada@xn--bcher-kva.de");
        assert_eq!(n("  ada@example.com "), "ada@example.com");
    }

    #[test]
    fn dots_and_tags_in_the_local_part_are_kept() {
        assert_eq!(n("a.da+x@example.com"), "a.da+x@example.com");
        assert_ne!(n("a.da@example.com"), n("ada@example.com"));
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "a\0da@example.com",
            "ada@exa mple.com",
            "ada@-example.com",
            "ada@example",
            "ada@exa\u{7}mple.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        assert!(normalize_email(&"a".repeat(5000)).is_err());
    }

    #[test]
    fn normalisation_is_idempotent() {
        for s in [
            "Ada@Example.com",
            "ｂｏｂ@ｅｘａｍｐｌｅ.ｃｏｍ",
            "zoë@Bücher.de",
            "İstanbul@example.com",
        ] {
            let once = n(s);
            assert_eq!(n(&once), once, "{s}");
        }
    }
}
