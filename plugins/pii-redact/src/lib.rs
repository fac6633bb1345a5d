//! `pii-redact`: a pure skill that finds and masks personal data in text.
//!
//! Kinds, each replaced by a tag such as `[EMAIL]`:
//! - e-mail addresses;
//! - IBANs, accepted only when the ISO 13616 mod-97 check gives 1;
//! - payment card numbers (13 to 19 digits, spaces or dashes allowed), accepted only when the
//!   Luhn check passes;
//! - IPv4 addresses in dotted-quad form with every octet at most 255 and no leading zeros;
//! - phone numbers: international (`+` and 8 to 15 digits) or North American `(555) 123-4567`.
//!
//! Where candidates overlap, the one starting first wins, and at the same start the kind listed
//! first above.

use std::sync::OnceLock;

use regex::Regex;

/// The text to redact.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// UTF-8 text, any length the memory limit allows.
    pub text: String,
}

/// Matches found per kind.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Counts {
    /// E-mail addresses.
    pub email: u64,
    /// IBANs (mod-97 valid).
    pub iban: u64,
    /// Payment card numbers (Luhn valid).
    pub card: u64,
    /// IPv4 addresses.
    pub ipv4: u64,
    /// Phone numbers.
    pub phone: u64,
}

/// The redacted text and what was found.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Output {
    /// The input with every match replaced by its tag.
    pub redacted: String,
    /// Matches per kind.
    pub counts: Counts,
    /// Bytes of input scanned.
    pub bytes_scanned: u64,
}

/// Kinds of personal data, in precedence order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// An e-mail address.
    Email,
    /// An IBAN.
    Iban,
    /// A payment card number.
    Card,
    /// An IPv4 address.
    Ipv4,
    /// A phone number.
    Phone,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Email => "[EMAIL]",
            Kind::Iban => "[IBAN]",
            Kind::Card => "[CARD]",
            Kind::Ipv4 => "[IPV4]",
            Kind::Phone => "[PHONE]",
        }
    }
}

struct Detector {
    kind: Kind,
    pattern: Regex,
    accept: fn(&str) -> bool,
}

fn detectors() -> &'static [Detector] {
    static DETECTORS: OnceLock<Vec<Detector>> = OnceLock::new();
    DETECTORS.get_or_init(|| {
        // `(?-u)`: ASCII semantics, so the component carries no Unicode tables.
        let build = |kind, pattern: &str, accept| Detector {
            kind,
            pattern: Regex::new(pattern).expect("detector patterns are valid"),
            accept,
        };
        vec![
            build(
                Kind::Email,
                r"(?-u)[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}",
                |_| true,
            ),
            build(
                Kind::Iban,
                r"(?-u)\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
                iban_is_valid,
            ),
            build(Kind::Card, r"(?-u)\b[0-9](?:[ \-]?[0-9]){12,18}\b", luhn_is_valid),
            build(
                Kind::Ipv4,
                r"(?-u)\b(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}\b",
                ipv4_is_standalone,
            ),
            build(
                Kind::Phone,
                r"(?-u)(?:\+[1-9][0-9 .\-()]{6,20}[0-9]|\(?\b[2-9][0-9]{2}\)?[ .\-][0-9]{3}[ .\-][0-9]{4}\b)",
                phone_is_plausible,
            ),
        ]
    })
}

/// ISO 13616 check: move the first four characters to the end, map letters to 10..=35, and the
/// number modulo 97 must be 1. Length 15 to 34 after removing spaces.
pub fn iban_is_valid(candidate: &str) -> bool {
    let compact: Vec<u8> = candidate.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut remainder: u32 = 0;
    for &byte in tail.iter().chain(head) {
        let value = match byte {
            b'0'..=b'9' => u32::from(byte - b'0'),
            b'A'..=b'Z' => u32::from(byte - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// Luhn (ISO/IEC 7812-1) check over the digits of `candidate`, which must number 13 to 19.
pub fn luhn_is_valid(candidate: &str) -> bool {
    let digits: Vec<u32> = candidate.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(index, &digit)| {
            if index % 2 == 1 {
                let doubled = digit * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                digit
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The regex already bounds each octet to 0..=255 without leading zeros.
fn ipv4_is_standalone(_candidate: &str) -> bool {
    true
}

/// 7 to 15 digits (E.164 allows at most 15).
fn phone_is_plausible(candidate: &str) -> bool {
    let digits = candidate.bytes().filter(u8::is_ascii_digit).count();
    (7..=15).contains(&digits)
}

/// Finds the non-overlapping matches in `text`: `(start, end, kind)`, sorted by start.
pub fn find(text: &str) -> Vec<(usize, usize, Kind)> {
    let mut candidates = Vec::new();
    for detector in detectors() {
        for found in detector.pattern.find_iter(text) {
            if (detector.accept)(found.as_str()) {
                candidates.push((found.start(), found.end(), detector.kind));
            }
        }
    }
    candidates.sort_by_key(|&(start, end, kind)| (start, kind, std::cmp::Reverse(end)));
    let mut chosen: Vec<(usize, usize, Kind)> = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        if chosen.last().is_none_or(|last| candidate.0 >= last.1) {
            chosen.push(candidate);
        }
    }
    chosen
}

/// Redacts `text`, returning the masked text and the counts per kind.
pub fn redact_text(text: &str) -> (String, Counts) {
    let mut counts = Counts::default();
    let mut redacted = String::with_capacity(text.len());
    let mut cursor = 0;
    for (start, end, kind) in find(text) {
        redacted.push_str(&text[cursor..start]);
        redacted.push_str(kind.tag());
        cursor = end;
        let counter = match kind {
            Kind::Email => &mut counts.email,
            Kind::Iban => &mut counts.iban,
            Kind::Card => &mut counts.card,
            Kind::Ipv4 => &mut counts.ipv4,
            Kind::Phone => &mut counts.phone,
        };
        *counter += 1;
    }
    redacted.push_str(&text[cursor..]);
    (redacted, counts)
}

/// Redacts `input.text` into an [`Output`].
pub fn redact_input(input: &Input) -> Output {
    let (redacted, counts) = redact_text(&input.text);
    Output {
        redacted,
        counts,
        bytes_scanned: input.text.len() as u64,
    }
}

/// The skill's handler.
///
/// # Errors
///
/// Never fails on valid input; malformed input is rejected by the SDK as `invalid-input`.
#[cfg(feature = "component")]
pub fn redact(_context: &plugin_abi::guest::Context, input: Input) -> Result<Output, plugin_abi::guest::SkillError> {
    Ok(redact_input(&input))
}

#[cfg(feature = "component")]
plugin_abi::skill!(id: "pii-redact", side_effect: Pure, capabilities: [], handler: redact);

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, expected: &str, expected_counts: Counts) {
        let (redacted, counts) = redact_text(text);
        assert_eq!(redacted, expected);
        assert_eq!(counts, expected_counts);
    }

    #[test]
    fn redacts_each_kind() {
        check(
            "Maintainer: Jane Doe <jane.doe@debian.org>  Mon, 01 Jan 2024",
            "Maintainer: Jane Doe <[EMAIL]>  Mon, 01 Jan 2024",
            Counts {
                email: 1,
                ..Counts::default()
            },
        );
        check(
            "pay to DE89 3704 0044 0532 0130 00 or GB82WEST12345698765432",
            "pay to [IBAN] or [IBAN]",
            Counts {
                iban: 2,
                ..Counts::default()
            },
        );
        check(
            "card 4111 1111 1111 1111, or 5500-0000-0000-0004",
            "card [CARD], or [CARD]",
            Counts {
                card: 2,
                ..Counts::default()
            },
        );
        check(
            "host 192.168.1.20 and 10.0.0.1.",
            "host [IPV4] and [IPV4].",
            Counts {
                ipv4: 2,
                ..Counts::default()
            },
        );
        check(
            "call +49 30 1234567 or (555) 123-4567",
            "call [PHONE] or [PHONE]",
            Counts {
                phone: 2,
                ..Counts::default()
            },
        );
    }

    #[test]
    fn checksums_reject_look_alikes() {
        // Luhn fails, mod-97 fails, octet over 255: left alone.
        check("4111 1111 1111 1112", "4111 1111 1111 1112", Counts::default());
        check(
            "DE89 3704 0044 0532 0130 02",
            "DE89 3704 0044 0532 0130 02",
            Counts::default(),
        );
        check("999.1.1.1", "999.1.1.1", Counts::default());
        // Dates and versions are not phone numbers.
        check(
            "2024-01-15 version 1.2-3",
            "2024-01-15 version 1.2-3",
            Counts::default(),
        );
    }

    #[test]
    fn checks_are_correct_on_reference_numbers() {
        assert!(iban_is_valid("FR1420041010050500013M02606"));
        assert!(iban_is_valid("NL91ABNA0417164300"));
        assert!(!iban_is_valid("NL91ABNA0417164301"));
        assert!(luhn_is_valid("378282246310005"));
        assert!(!luhn_is_valid("378282246310006"));
        assert!(!luhn_is_valid("42"));
    }

    #[test]
    fn overlaps_resolve_to_the_first_and_strongest_match() {
        // The digits inside the e-mail address are not a phone number.
        check(
            "write to +4930123456@example.com",
            "write to [EMAIL]",
            Counts {
                email: 1,
                ..Counts::default()
            },
        );
        assert_eq!(redact_text("").0, "");
    }
}
