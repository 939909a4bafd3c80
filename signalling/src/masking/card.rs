//! Payment card numbers: the Luhn checksum and a table of brand prefixes and lengths.

/// A range of issuer prefixes of one brand and the number lengths it issues.
struct BrandRange {
    /// Brand name, for tests and documentation.
    #[cfg_attr(not(test), allow(dead_code))]
    name: &'static str,
    /// Number of leading digits compared with `lo..=hi`.
    prefix_digits: u8,
    lo: u32,
    hi: u32,
    /// Bit `n` set when numbers of `n` digits exist.
    lengths: u32,
}

const fn span(min: u32, max: u32) -> u32 {
    let mut bits = 0;
    let mut n = min;
    while n <= max {
        bits |= 1 << n;
        n += 1;
    }
    bits
}

const fn one(n: u32) -> u32 {
    1 << n
}

const fn range(name: &'static str, prefix_digits: u8, lo: u32, hi: u32, lengths: u32) -> BrandRange {
    BrandRange {
        name,
        prefix_digits,
        lo,
        hi,
        lengths,
    }
}

/// Issuer prefixes and lengths (ISO/IEC 7812 issuer identification numbers of the brands a contact centre
/// meets). A number is a card only when its prefix and length match an entry AND its Luhn checksum holds.
/// UATP (prefix 1, 15 digits) is left out on purpose: it would make every Luhn-valid 15-digit reference
/// number that starts with 1 a "card".
const BRANDS: &[BrandRange] = &[
    range("visa", 1, 4, 4, one(13) | one(16) | one(19)),
    range("mastercard", 2, 51, 55, one(16)),
    range("mastercard", 4, 2221, 2720, one(16)),
    range("amex", 2, 34, 34, one(15)),
    range("amex", 2, 37, 37, one(15)),
    range("discover", 4, 6011, 6011, span(16, 19)),
    range("discover", 3, 644, 649, span(16, 19)),
    range("discover", 2, 65, 65, span(16, 19)),
    range("discover", 6, 622126, 622925, span(16, 19)),
    range("diners", 3, 300, 305, span(14, 19)),
    range("diners", 4, 3095, 3095, span(14, 19)),
    range("diners", 2, 36, 36, span(14, 19)),
    range("diners", 2, 38, 39, span(14, 19)),
    range("jcb", 4, 3528, 3589, span(16, 19)),
    range("unionpay", 2, 62, 62, span(16, 19)),
    range("unionpay", 2, 81, 81, span(16, 19)),
    range("maestro", 4, 5018, 5018, span(12, 19)),
    range("maestro", 4, 5020, 5020, span(12, 19)),
    range("maestro", 4, 5038, 5038, span(12, 19)),
    range("maestro", 4, 5893, 5893, span(12, 19)),
    range("maestro", 4, 6304, 6304, span(12, 19)),
    range("maestro", 4, 6759, 6759, span(12, 19)),
    range("maestro", 4, 6761, 6763, span(12, 19)),
    range("maestro", 6, 676770, 676770, span(12, 19)),
    range("maestro", 6, 676774, 676774, span(12, 19)),
    range("mir", 4, 2200, 2204, span(16, 19)),
    range("rupay", 2, 60, 60, span(16, 19)),
    range("rupay", 2, 82, 82, one(16)),
    range("rupay", 3, 508, 508, one(16)),
    range("rupay", 3, 353, 353, one(16)),
    range("rupay", 3, 356, 356, one(16)),
    range("dankort", 4, 5019, 5019, one(16)),
    range("interpayment", 3, 636, 636, span(16, 19)),
    range("instapayment", 3, 637, 639, one(16)),
    range("troy", 4, 9792, 9792, one(16)),
    range("verve", 6, 506099, 506198, one(16) | one(18) | one(19)),
    range("verve", 6, 650002, 650027, one(16) | one(18) | one(19)),
    range("uzcard", 4, 8600, 8600, one(16)),
    range("humo", 4, 9860, 9860, one(16)),
];

/// The shortest and longest card numbers considered.
pub(crate) const MIN_LEN: usize = 12;
pub(crate) const MAX_LEN: usize = 19;

fn prefix_value(digits: &[u8], n: usize) -> u32 {
    digits[..n].iter().fold(0u32, |acc, &d| acc * 10 + u32::from(d))
}

fn brand_of(digits: &[u8]) -> Option<&'static BrandRange> {
    let len = digits.len();
    if !(MIN_LEN..=MAX_LEN).contains(&len) {
        return None;
    }
    BRANDS.iter().find(|b| {
        b.lengths & (1 << len) != 0 && {
            let p = prefix_value(digits, usize::from(b.prefix_digits));
            (b.lo..=b.hi).contains(&p)
        }
    })
}

/// The Luhn (mod 10) checksum of digit values `0..=9`.
pub(crate) fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let d = u32::from(d);
        sum += if i % 2 == 1 {
            let x = d * 2;
            if x > 9 { x - 9 } else { x }
        } else {
            d
        };
    }
    sum.is_multiple_of(10)
}

/// True when `digits` (values `0..=9`) are a card number: known brand prefix and length, and Luhn-valid.
pub(crate) fn is_card(digits: &[u8]) -> bool {
    brand_of(digits).is_some() && luhn_valid(digits)
}

/// The brand name of a card number, for tests.
#[cfg(test)]
pub(crate) fn brand_name(digits: &[u8]) -> Option<&'static str> {
    if luhn_valid(digits) {
        brand_of(digits).map(|b| b.name)
    } else {
        None
    }
}
