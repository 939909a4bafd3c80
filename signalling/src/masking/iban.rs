//! International bank account numbers (ISO 13616): country lengths and the mod-97 check.

/// IBAN length per country (SWIFT IBAN registry). Only these countries are recognised: a known length
/// plus mod-97 keeps false positives on reference numbers that start with two letters negligible.
#[rustfmt::skip]
const LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24), (b"AE", 23), (b"AL", 28), (b"AT", 20), (b"AZ", 28), (b"BA", 20), (b"BE", 16), (b"BG", 22),
    (b"BH", 22), (b"BI", 27), (b"BR", 29), (b"BY", 28), (b"CH", 21), (b"CR", 22), (b"CY", 28), (b"CZ", 24),
    (b"DE", 22), (b"DJ", 27), (b"DK", 18), (b"DO", 28), (b"EE", 20), (b"EG", 29), (b"ES", 24), (b"FI", 18),
    (b"FK", 18), (b"FO", 18), (b"FR", 27), (b"GB", 22), (b"GE", 22), (b"GI", 23), (b"GL", 18), (b"GR", 27),
    (b"GT", 28), (b"HN", 28), (b"HR", 21), (b"HU", 28), (b"IE", 22), (b"IL", 23), (b"IQ", 23), (b"IS", 26),
    (b"IT", 27), (b"JO", 30), (b"KW", 30), (b"KZ", 20), (b"LB", 28), (b"LC", 32), (b"LI", 21), (b"LT", 20),
    (b"LU", 20), (b"LV", 21), (b"LY", 25), (b"MC", 27), (b"MD", 24), (b"ME", 22), (b"MK", 19), (b"MN", 20),
    (b"MR", 27), (b"MT", 31), (b"MU", 30), (b"NI", 28), (b"NL", 18), (b"NO", 15), (b"OM", 23), (b"PK", 24),
    (b"PL", 28), (b"PS", 29), (b"QA", 29), (b"RO", 24), (b"RS", 22), (b"RU", 33), (b"SA", 24), (b"SC", 31),
    (b"SD", 18), (b"SE", 24), (b"SI", 19), (b"SK", 24), (b"SM", 27), (b"SO", 23), (b"ST", 25), (b"SV", 28),
    (b"TL", 23), (b"TN", 24), (b"TR", 26), (b"UA", 29), (b"VA", 22), (b"VG", 24), (b"XK", 20), (b"YE", 30),
];

/// The IBAN length of a country code (upper-case ASCII letters), if the country issues IBANs.
pub(crate) fn country_length(cc: [u8; 2]) -> Option<usize> {
    LENGTHS.iter().find(|(c, _)| **c == cc).map(|&(_, n)| n)
}

/// One IBAN character as its mod-97 value: digits 0–9, letters A–Z as 10–35.
#[derive(Clone, Copy)]
pub(crate) enum Alnum {
    Digit(u8),
    Letter(u8),
}

/// The ISO 7064 mod 97-10 check over an IBAN given as characters (country, check digits, BBAN).
pub(crate) fn mod97_valid(chars: &[Alnum]) -> bool {
    if chars.len() < 5 {
        return false;
    }
    let mut rem: u32 = 0;
    let rotated = chars[4..].iter().chain(chars[..4].iter());
    for a in rotated {
        match *a {
            Alnum::Digit(d) => rem = (rem * 10 + u32::from(d)) % 97,
            Alnum::Letter(l) => {
                let v = u32::from(l.to_ascii_uppercase() - b'A') + 10;
                rem = (rem * 100 + v) % 97;
            }
        }
    }
    rem == 1
}
