//! Finding what the masks apply to: IBANs, digit runs, chains of runs, and the digits a message leaves
//! for the next one (its tail).

use super::*;

/// IBANs: two letters, two check digits, the BBAN, single spaces allowed, the country's length, mod-97.
/// Keeps the last four characters; every character of the IBAN is excluded from the digit rules.
pub(super) fn find_ibans(ch: &mut [Ch]) -> u32 {
    let n = ch.len();
    let is_alnum = |c: &Ch| !c.excluded && (c.c.is_ascii_alphanumeric() || c.digit != NOT_DIGIT);
    let mut found = 0;
    let mut i = 0;
    while i + 3 < n {
        let starts = ch[i].c.is_ascii_alphabetic()
            && ch[i + 1].c.is_ascii_alphabetic()
            && ch[i + 2].digit != NOT_DIGIT
            && ch[i + 3].digit != NOT_DIGIT
            && !ch[i].excluded
            && (i == 0 || !(ch[i - 1].c.is_alphanumeric() || ch[i - 1].digit != NOT_DIGIT));
        if !starts {
            i += 1;
            continue;
        }
        let cc = [
            ch[i].c.to_ascii_uppercase() as u8,
            ch[i + 1].c.to_ascii_uppercase() as u8,
        ];
        let Some(want) = iban::country_length(cc) else {
            i += 1;
            continue;
        };
        let mut idx: Vec<usize> = Vec::with_capacity(want);
        let mut j = i;
        while idx.len() < want && j < n {
            if is_alnum(&ch[j]) {
                idx.push(j);
                j += 1;
            } else if matches!(ch[j].c, ' ' | '\u{00A0}') && j + 1 < n && is_alnum(&ch[j + 1]) {
                j += 1;
            } else {
                break;
            }
        }
        let ends_cleanly = j == n || !(ch[j].c.is_alphanumeric() || ch[j].digit != NOT_DIGIT);
        if idx.len() == want && ends_cleanly {
            let chars: Vec<Alnum> = idx
                .iter()
                .map(|&k| {
                    if ch[k].digit != NOT_DIGIT {
                        Alnum::Digit(ch[k].digit)
                    } else {
                        Alnum::Letter(ch[k].c as u8)
                    }
                })
                .collect();
            if iban::mod97_valid(&chars) {
                for (pos, &k) in idx.iter().enumerate() {
                    ch[k].excluded = true;
                    if pos + 4 < idx.len() {
                        ch[k].masked = true;
                    }
                }
                found += 1;
                i = j;
                continue;
            }
        }
        i += 1;
    }
    found
}

/// Digit runs of the message: digit groups joined by single separators, their digits in `buf`.
pub(super) fn find_runs(ch: &[Ch], buf: &mut DigitBuf) -> Vec<RunMeta> {
    let n = ch.len();
    let is_digit = |i: usize| i < n && ch[i].digit != NOT_DIGIT && !ch[i].excluded;
    let mut runs = Vec::new();
    let mut i = 0;
    while i < n {
        if !is_digit(i) {
            i += 1;
            continue;
        }
        let start = i;
        let from = buf.values.len();
        let mut group_count = 0;
        let mut sep: Option<char> = None;
        loop {
            let mut first = true;
            group_count += 1;
            while is_digit(i) {
                buf.values.push(ch[i].digit);
                buf.group_start.push(first);
                buf.sep_before.push(if first { sep } else { None });
                buf.chars.push(i);
                first = false;
                i += 1;
            }
            if i + 1 < n && digits::is_separator(ch[i].c) && is_digit(i + 1) {
                sep = Some(ch[i].c);
                i += 1;
                continue;
            }
            break;
        }
        let to = buf.values.len();
        runs.push(RunMeta {
            digits: (from, to),
            chars: (from, to),
            prior_len: 0,
            end_char: i,
            // After `+` (a phone number), or glued to a mask character: `•` stands for a digit, so the run
            // continues a longer (masked) number and its first group is no group boundary. Without this a
            // second pass could start a card on the digits an IBAN or a card kept visible.
            plus_before: start > 0 && matches!(ch[start - 1].c, '+' | '\u{FF0B}' | MASK_CHAR),
            group_count,
            ipv4_alone: false,
        });
    }
    runs
}

/// True when the characters between two runs make them one number: no letter, nothing excluded, at most
/// [`MAX_GAP_SYMBOL_RUNS`] runs of visible characters.
pub(super) fn short_gap(between: &[Ch]) -> bool {
    let mut runs = 0u32;
    // The last visible character, whitespace as ' '.
    let mut last: Option<char> = None;
    for c in between {
        if c.excluded {
            return false;
        }
        let key = match digits::gap_class(c.c) {
            digits::GapClass::Ignorable => continue,
            digits::GapClass::Letter => return false,
            digits::GapClass::Space => ' ',
            digits::GapClass::Symbol => c.c,
        };
        if last != Some(key) {
            runs += 1;
            if runs > MAX_GAP_SYMBOL_RUNS {
                return false;
            }
            last = Some(key);
        }
    }
    true
}

/// Chains: runs joined by short gaps ([`short_gap`]), where card numbers are looked for. The first chain
/// carries the prior tail when `prior_gap` plus the text before the chain is short ([`GapCount::joins`])
/// and the chain does not start with `+` (a phone number).
pub(super) fn find_chains(
    runs: &[Run<'_>],
    ch: &[Ch],
    prior: &[PriorDigit],
    prior_gap: GapCount,
    buf: &mut DigitBuf,
) -> Vec<RunMeta> {
    // Spans of runs first: (first run, one past the last run, carries the prior tail, digit count).
    let mut spans: Vec<(usize, usize, bool, usize)> = Vec::new();
    let mut prev_end: Option<usize> = None;
    for (k, run) in runs.iter().enumerate() {
        let Some(&first) = run.chars.first() else { continue };
        let joined = prev_end.is_some_and(|end| short_gap(&ch[end..first]));
        prev_end = Some(run.end_char);
        if joined && let Some(span) = spans.last_mut() {
            span.1 = k + 1;
            span.3 += run.len();
            continue;
        }
        let with_prior = spans.is_empty()
            && !prior.is_empty()
            && !run.plus_before
            && prior_gap.add(GapCount::of_chars(&ch[..first])).joins();
        let prior_len = if with_prior { prior.len() } else { 0 };
        spans.push((k, k + 1, with_prior, prior_len + run.len()));
    }
    // Only a chain long enough to hold a card, or the last one (the tail), is built.
    let last = spans.len().saturating_sub(1);
    let mut chains: Vec<RunMeta> = Vec::new();
    for (i, &(from, to, with_prior, len)) in spans.iter().enumerate() {
        if len < card::MIN_LEN && i != last {
            continue;
        }
        let first_run = &runs[from];
        let digits_from = buf.values.len();
        let chars_from = buf.chars.len();
        if with_prior {
            for p in prior {
                buf.values.push(p.value);
                buf.group_start.push(p.group_start);
            }
        }
        let mut group_count = 0;
        for run in &runs[from..to] {
            buf.values.extend_from_slice(run.values);
            buf.group_start.extend_from_slice(run.group_start);
            buf.chars.extend_from_slice(run.chars);
            group_count += run.group_count;
        }
        chains.push(RunMeta {
            digits: (digits_from, buf.values.len()),
            chars: (chars_from, buf.chars.len()),
            prior_len: if with_prior { prior.len() } else { 0 },
            end_char: runs[to - 1].end_char,
            plus_before: first_run.plus_before && !with_prior,
            group_count,
            ipv4_alone: !with_prior && to - from == 1 && len >= card::MIN_LEN && first_run.is_ipv4(),
        });
    }
    chains
}

/// The digits of the chain the message ends with (at most a few words may follow, [`GapCount::joins`]),
/// oldest first, at most [`MAX_TAIL_DIGITS`], masked or not: a longer card may begin with a shorter valid
/// one. Also what follows them. A chain that starts with `+` is a phone number and leaves no tail.
pub(super) fn compute_tail(chains: &[Run<'_>], ch: &[Ch], out_byte: &[usize]) -> (Vec<TailOut>, GapCount) {
    let Some(run) = chains.last().filter(|c| !c.plus_before) else {
        return (Vec::new(), GapCount::default());
    };
    let trail = GapCount::of_chars(&ch[run.end_char..]);
    if !trail.joins() {
        return (Vec::new(), GapCount::default());
    }
    let from = run.len().saturating_sub(MAX_TAIL_DIGITS);
    let tail = (from..run.len())
        .map(|i| {
            if i < run.prior_len {
                TailOut::Prior(i)
            } else {
                let ci = run.chars[i - run.prior_len];
                TailOut::Here {
                    value: run.values[i],
                    group_start: run.group_start[i],
                    out_byte: out_byte[ci],
                }
            }
        })
        .collect();
    (tail, trail)
}
