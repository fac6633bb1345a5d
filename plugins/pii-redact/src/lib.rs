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

use regex_automata::meta;

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
#[repr(u8)]
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

/// A detector: the kind it finds, its pattern, and the check a match must pass.
type Detector = (Kind, &'static str, fn(&str) -> bool);

/// The five patterns, in precedence order, each with the check a match must pass.
///
/// `(?-u)`: ASCII semantics, so the component carries no Unicode tables.
const DETECTORS: [Detector; 5] = [
    (
        Kind::Email,
        r"(?-u)[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}",
        |_| true,
    ),
    (
        Kind::Iban,
        r"(?-u)\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
        iban_is_valid,
    ),
    (Kind::Card, r"(?-u)\b[0-9](?:[ \-]?[0-9]){12,18}\b", luhn_is_valid),
    (
        Kind::Ipv4,
        r"(?-u)\b(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}\b",
        ipv4_is_standalone,
    ),
    (
        Kind::Phone,
        r"(?-u)(?:\+[1-9][0-9 .\-()]{6,20}[0-9]|\(?\b[2-9][0-9]{2}\)?[ .\-][0-9]{3}[ .\-][0-9]{4}\b)",
        phone_is_plausible,
    ),
];

/// The compiled patterns, built on first use (or at package time, when the component is
/// pre-initialised: see [`initialize`]).
fn patterns() -> &'static [meta::Regex; 5] {
    static PATTERNS: OnceLock<[meta::Regex; 5]> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        DETECTORS.map(|(_, pattern, _)| meta::Regex::new(pattern).expect("detector patterns are valid"))
    })
}

/// Compiles the patterns now rather than at the first call.
///
/// The component exports this as its pre-initialisation function, so that packaging
/// (`cargo xtask build-plugins`, Wizer) snapshots the compiled patterns into the component and a
/// fresh instance starts ready.
pub fn initialize() {
    patterns();
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
///
/// One pass over the bytes ([`windows`]) finds the runs each pattern could match in, keeping
/// only runs that hold what an accepted match needs (an `@`, 13 digits, ...); the
/// exact patterns then run inside those runs only, with look-around (`\b`) still seeing the
/// whole text. The result is identical to running each pattern over the whole text
/// ([`find_reference`], the oracle the tests compare against): every match of a pattern lies
/// inside one run of its byte class, so a pattern's leftmost-first matches over the text are
/// the concatenation of its matches inside each run, and a skipped run holds only matches its
/// check would reject.
pub fn find(text: &str) -> Vec<(usize, usize, Kind)> {
    let patterns = patterns();
    let mut candidates = Vec::new();
    for (kind, start, end) in windows(text.as_bytes()) {
        let index = kind as usize;
        let accept = DETECTORS[index].2;
        let input = regex_automata::Input::new(text).range(start..end);
        for found in patterns[index].find_iter(input) {
            if accept(&text[found.range()]) {
                candidates.push((found.start(), found.end(), kind));
            }
        }
    }
    choose(candidates)
}

/// Resolves overlaps: sorted by start, then kind precedence, then the longer match; the first
/// wins and anything overlapping it is dropped.
fn choose(mut candidates: Vec<(usize, usize, Kind)>) -> Vec<(usize, usize, Kind)> {
    candidates.sort_by_key(|&(start, end, kind)| (start, kind, std::cmp::Reverse(end)));
    let mut chosen: Vec<(usize, usize, Kind)> = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        if chosen.last().is_none_or(|last| candidate.0 >= last.1) {
            chosen.push(candidate);
        }
    }
    chosen
}

/// The reference: each pattern run over the whole text with the `regex` crate, as this skill
/// did before [`find`] scanned in one pass. Kept as the oracle for tests and the benchmark.
#[cfg(any(test, feature = "reference"))]
pub fn find_reference(text: &str) -> Vec<(usize, usize, Kind)> {
    static REFERENCE: OnceLock<Vec<regex::Regex>> = OnceLock::new();
    let patterns = REFERENCE.get_or_init(|| {
        DETECTORS
            .iter()
            .map(|(_, pattern, _)| regex::Regex::new(pattern).expect("detector patterns are valid"))
            .collect()
    });
    let mut candidates = Vec::new();
    for ((kind, _, accept), pattern) in DETECTORS.iter().zip(patterns) {
        for found in pattern.find_iter(text) {
            if accept(found.as_str()) {
                candidates.push((found.start(), found.end(), *kind));
            }
        }
    }
    choose(candidates)
}

// The byte classes, one bit per kind: the bytes a match of that kind can consist of.
const EMAIL: u8 = 1 << Kind::Email as u8;
const IBAN: u8 = 1 << Kind::Iban as u8;
const CARD: u8 = 1 << Kind::Card as u8;
const IPV4: u8 = 1 << Kind::Ipv4 as u8;
const PHONE: u8 = 1 << Kind::Phone as u8;

/// Per byte: the kinds whose matches may contain it.
static CLASS: [u8; 256] = {
    let mut class = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        let mut bits = 0;
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-' | b'@') {
            bits |= EMAIL;
        }
        if b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ' {
            bits |= IBAN;
        }
        if b.is_ascii_digit() || matches!(b, b' ' | b'-') {
            bits |= CARD;
        }
        if b.is_ascii_digit() || b == b'.' {
            bits |= IPV4;
        }
        if b.is_ascii_digit() || matches!(b, b' ' | b'.' | b'-' | b'(' | b')' | b'+') {
            bits |= PHONE;
        }
        class[byte] = bits;
        byte += 1;
    }
    class
};

/// What a run of `kind`'s byte class holds that its check cares about.
#[derive(Default)]
struct Held {
    digits: usize,
    uppers: usize,
    dots: usize,
}

/// Whether a run of `kind`'s byte class can hold a match that `kind`'s check accepts.
///
/// Necessary conditions only: an accepted IBAN has 15 or more letters and digits, two of each
/// at least; a card number 13 digits; an IPv4 address 4 digits and 3 dots; an accepted phone
/// number 7 digits. (E-mail runs are found from their `@`, which is all an address needs.)
fn worth_searching(kind: Kind, held: &Held) -> bool {
    match kind {
        Kind::Email => true,
        Kind::Iban => held.uppers >= 2 && held.digits >= 2 && held.uppers + held.digits >= 15,
        Kind::Card => held.digits >= 13,
        Kind::Ipv4 => held.digits >= 4 && held.dots >= 3,
        Kind::Phone => held.digits >= 7,
    }
}

/// The kinds whose matches hold digits: every accepted match of these has two or more.
const NUMERIC: [Kind; 4] = [Kind::Iban, Kind::Card, Kind::Ipv4, Kind::Phone];

/// One pass over `text` for the bytes every match needs (an `@` for an e-mail address, a digit
/// for the others): around each, the maximal run of each kind's byte class, kept when it is
/// worth searching. Returns `(kind, start, end)`; each run appears once.
pub fn windows(text: &[u8]) -> Vec<(Kind, usize, usize)> {
    // Where the last run found for each kind ends: a trigger inside it has been handled.
    let mut handled = [0usize; 5];
    let mut windows = Vec::new();
    let mut position = 0;
    while let Some(offset) = text[position..]
        .iter()
        .position(|&byte| byte.is_ascii_digit() || byte == b'@')
    {
        position += offset;
        let kinds: &[Kind] = if text[position] == b'@' {
            &[Kind::Email]
        } else {
            &NUMERIC
        };
        for &kind in kinds {
            let index = kind as usize;
            if position < handled[index] {
                continue;
            }
            let bit = 1 << kind as u8;
            let in_class = |byte: &u8| CLASS[usize::from(*byte)] & bit != 0;
            let start = position - text[..position].iter().rev().take_while(|byte| in_class(byte)).count();
            let end = position + text[position..].iter().take_while(|byte| in_class(byte)).count();
            handled[index] = end;
            let mut held = Held::default();
            if kind != Kind::Email {
                for &byte in &text[start..end] {
                    held.digits += usize::from(byte.is_ascii_digit());
                    held.uppers += usize::from(byte.is_ascii_uppercase());
                    held.dots += usize::from(byte == b'.');
                }
            }
            if worth_searching(kind, &held) {
                windows.push((kind, start, end));
            }
        }
        position += 1;
    }
    windows
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
plugin_abi::skill!(id: "pii-redact", side_effect: Pure, capabilities: [], handler: redact, init: initialize);

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

    /// Debian changelogs on this machine (`/usr/share/doc/*/changelog.Debian.gz`), the real
    /// text the demo redacts; empty where there are none.
    fn changelogs() -> Vec<(std::path::PathBuf, String)> {
        use std::io::Read as _;
        let Ok(entries) = std::fs::read_dir("/usr/share/doc") else {
            return Vec::new();
        };
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("changelog.Debian.gz"))
            .filter(|path| path.is_file())
            .collect();
        paths.sort();
        paths
            .into_iter()
            .filter_map(|path| {
                let file = std::fs::File::open(&path).ok()?;
                let mut bytes = Vec::new();
                flate2::read::GzDecoder::new(file).read_to_end(&mut bytes).ok()?;
                Some((path, String::from_utf8_lossy(&bytes).into_owned()))
            })
            .collect()
    }

    #[test]
    fn one_pass_finds_exactly_what_the_five_pattern_scan_finds_on_real_changelogs() {
        let documents = changelogs();
        let mut total = Counts::default();
        for (path, text) in &documents {
            let found = find(text);
            assert_eq!(found, find_reference(text), "{}", path.display());
            for (_, _, kind) in found {
                match kind {
                    Kind::Email => total.email += 1,
                    Kind::Iban => total.iban += 1,
                    Kind::Card => total.card += 1,
                    Kind::Ipv4 => total.ipv4 += 1,
                    Kind::Phone => total.phone += 1,
                }
            }
        }
        if !documents.is_empty() {
            // Real changelogs hold e-mail addresses; a scan that finds none is broken.
            assert!(
                total.email > documents.len() as u64,
                "{total:?} over {} files",
                documents.len()
            );
        }
    }

    /// A small deterministic generator (SplitMix64), so a failure replays from its seed.
    struct Mix(u64);

    impl Mix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    #[test]
    fn one_pass_finds_exactly_what_the_five_pattern_scan_finds_on_adversarial_text() {
        // Fragments chosen to sit on every edge: valid and invalid numbers of each kind glued
        // to each other, to letters, to separators and to the class boundaries of each kind.
        let fragments = [
            "jane.doe@debian.org",
            "a@b.cd",
            "x@y",
            "@",
            "@@",
            "-@-.x",
            "foo.bar+tag@sub-d.example.co",
            "DE89 3704 0044 0532 0130 00",
            "GB82WEST12345698765432",
            "DE89370400440532013002",
            "NL91ABNA0417164300",
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "4111111111111112",
            "378282246310005",
            "192.168.1.20",
            "10.0.0.1",
            "999.1.1.1",
            "1.2.3.4.5",
            "01.02.03.04",
            "255.255.255.255",
            "+49 30 1234567",
            "(555) 123-4567",
            "555.123.4567",
            "+1 (555) 123-4567",
            "+4930123456",
            "0",
            "7",
            "12",
            "2024-01-15",
            "1.2-3",
            " ",
            "  ",
            "-",
            ".",
            "(",
            ")",
            "+",
            "x",
            "Q",
            "AB",
            "ab",
            "\n",
            "_",
            "%",
            "é",
            "<",
            ">",
            ",",
            "0000000000000",
            "9999999999999999999999",
        ];
        let mut rng = Mix(0x5EED_0017);
        for round in 0..3_000 {
            let mut text = String::new();
            for _ in 0..(1 + rng.next() % 24) {
                text.push_str(rng.pick(&fragments));
            }
            assert_eq!(find(&text), find_reference(&text), "round {round}: {text:?}");
        }
    }

    #[test]
    fn windows_never_skip_a_run_longer_than_the_packed_counts_hold() {
        // 70,000 digits and spaces: each 16-bit count wraps; the run must still be searched.
        let mut text = "4111 1111 1111 1111 ".repeat(3_500);
        text.push_str("mail a@b.org");
        assert_eq!(find(&text), find_reference(&text));
        assert_eq!(redact_text(&text).1.card, 3_500);
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
