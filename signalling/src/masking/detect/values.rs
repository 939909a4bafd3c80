//! Masking each kind of value on the runs and chains found: card numbers, US SSNs, expiry dates and CVVs
//! (the last two only near a card or a keyword).

use super::*;

/// Finds cards in a chain (windows that start and end on group boundaries, shortest first), masks every
/// digit of this message's part of the run except the last four of each card, and records which prior
/// digits belong to a card (they are masked by amending the earlier message).
pub(super) fn mask_cards(
    run: &Run<'_>,
    ch: &mut [Ch],
    prior_masked: &mut Vec<usize>,
    cards: &mut Vec<CardSpan>,
    f: &mut Findings,
) {
    let len = run.len();
    if len < card::MIN_LEN || run.ipv4_alone {
        return;
    }
    // (start, end, keep the last four): overlapping valid windows form one entry. Two valid readings of
    // the same digits (a 16-digit card and a CVV, a 19-digit card, a card glued to a phone number):
    // which four digits are "the last four" is unknown, so none stays visible.
    let mut found: Vec<(usize, usize, bool)> = Vec::new();
    for s in 0..=len - card::MIN_LEN {
        // A window must start on a group; not on the first group after '+'; and must reach this message
        // (windows inside the prior tail were examined with the previous message).
        if !run.group_start[s] || (s == 0 && run.plus_before) {
            continue;
        }
        for l in card::MIN_LEN..=card::MAX_LEN {
            let e = s + l;
            if e > len {
                break;
            }
            if e <= run.prior_len || !run.is_boundary(e) || !card::is_card(&run.values[s..e]) {
                continue;
            }
            match found.last_mut() {
                Some(last) if s < last.1 => {
                    last.1 = last.1.max(e);
                    last.2 = false;
                }
                _ => found.push((s, e, true)),
            }
        }
    }
    if found.is_empty() {
        return;
    }
    for &ci in run.chars {
        ch[ci].masked = true;
    }
    for &(_, e, keep4) in &found {
        if keep4 {
            for i in e.saturating_sub(4).max(run.prior_len)..e {
                ch[run.chars[i - run.prior_len]].masked = false;
            }
        }
    }
    for &(s, e, _) in &found {
        for i in s.max(run.prior_len)..e {
            ch[run.chars[i - run.prior_len]].in_card = true;
        }
        f.cards += 1;
        if s < run.prior_len {
            f.split_cards += 1;
            prior_masked.extend(s..run.prior_len.min(e));
        }
        let here_first = s.max(run.prior_len) - run.prior_len;
        let here_last = e - 1 - run.prior_len;
        cards.push(CardSpan {
            first_char: run.chars[here_first],
            last_char: run.chars[here_last],
        });
    }
}

/// US SSNs written with separators: `AAA-GG-SSSS` or `AAA GG SSSS` (the same separator twice), with the
/// never-issued areas 000, 666 and 900–999, group 00 and serial 0000 excluded. Masks all nine digits.
pub(super) fn mask_ssn(run: &Run<'_>, ch: &mut [Ch]) -> u32 {
    if run.group_count < 3 {
        return 0;
    }
    let groups = run.groups();
    let mut found = 0;
    let sep_kind = |first: usize| run.sep_before[first].and_then(digits::separator_kind);
    for g in 0..groups.len().saturating_sub(2) {
        let (a, b, c) = (groups[g], groups[g + 1], groups[g + 2]);
        if (a.1, b.1, c.1) != (3, 2, 4) || a.0 < run.prior_len || (a.0 == 0 && run.plus_before) {
            continue;
        }
        let (s1, s2) = (run.sep_before[b.0], run.sep_before[c.0]);
        if s1.is_none() || s2 != s1 || !matches!(sep_kind(b.0), Some(SepKind::Dash | SepKind::Space)) {
            continue;
        }
        // The three groups must stand alone: no neighbouring group joined by the same separator.
        // (A masked neighbour counts as none: masked text must read as the original did.)
        let live = |(first, n): (usize, usize)| {
            (first..first + n).any(|i| i < run.prior_len || !ch[run.chars[i - run.prior_len]].masked)
        };
        let joined_before = g > 0 && run.sep_before[a.0] == s1 && live(groups[g - 1]);
        let joined_after = groups.get(g + 3).is_some_and(|&d| run.sep_before[d.0] == s1 && live(d));
        if joined_before || joined_after {
            continue;
        }
        let num = |(first, n): (usize, usize)| {
            run.values[first..first + n]
                .iter()
                .fold(0u32, |acc, &d| acc * 10 + u32::from(d))
        };
        let (area, group, serial) = (num(a), num(b), num(c));
        if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
            continue;
        }
        let here = |i: usize| run.chars[i - run.prior_len];
        if (a.0..c.0 + 4).any(|i| ch[here(i)].masked || ch[here(i)].in_card) {
            continue;
        }
        for i in a.0..c.0 + 4 {
            ch[here(i)].masked = true;
        }
        found += 1;
    }
    found
}

/// The keyword expressions worth running on a message (`None`: nothing they could qualify is there).
pub(super) struct Keywords<'a> {
    pub(super) cvv: Option<&'a Regex>,
    pub(super) expiry: Option<&'a Regex>,
}

/// What makes a CVV or an expiry date "sensitive here": a card close by, a card in the sender's previous
/// message, or a keyword just before it.
pub(super) struct Nearness {
    pub(super) cards: Vec<(usize, usize)>,
    pub(super) card_recent: bool,
    /// Character index just after each CVV keyword / expiry keyword.
    pub(super) cvv_kw: Vec<usize>,
    pub(super) exp_kw: Vec<usize>,
    /// Prefix count of digits (and mask characters), to check that no other number stands between a
    /// keyword and its value.
    pub(super) digits_before: Vec<u32>,
}

impl Nearness {
    pub(super) fn new(
        keywords: Keywords<'_>,
        text: &str,
        ch: &[Ch],
        cards: &[CardSpan],
        card_recent: bool,
        char_at: &dyn Fn(usize) -> usize,
    ) -> Self {
        let mut digits_before = Vec::with_capacity(ch.len() + 1);
        let mut count = 0u32;
        for c in ch {
            digits_before.push(count);
            // The mask character counts as a digit, so that masked text reads like the original.
            if c.digitish() {
                count += 1;
            }
        }
        digits_before.push(count);
        Self {
            cards: cards.iter().map(|c| (c.first_char, c.last_char)).collect(),
            card_recent,
            cvv_kw: keywords
                .cvv
                .map(|re| keyword_ends(re, text, char_at))
                .unwrap_or_default(),
            exp_kw: keywords
                .expiry
                .map(|re| keyword_ends(re, text, char_at))
                .unwrap_or_default(),
            digits_before,
        }
    }

    /// Cards are sorted and do not overlap: only the card starting last at or before `last` and the one
    /// after it can be the nearest.
    pub(super) fn near_card(&self, first: usize, last: usize) -> bool {
        if self.card_recent && first <= NEAR_CHARS {
            return true;
        }
        let idx = self.cards.partition_point(|&(cf, _)| cf <= last);
        let before = idx
            .checked_sub(1)
            .and_then(|i| self.cards.get(i))
            .is_some_and(|&(_, cl)| cl >= first || first - cl <= NEAR_CHARS);
        let after = self.cards.get(idx).is_some_and(|&(cf, _)| cf - last <= NEAR_CHARS);
        before || after
    }

    /// Keyword ends are sorted: the closest keyword before `first` decides (a farther one is farther and
    /// has at least the same digits in between).
    pub(super) fn after_keyword(&self, keywords: &[usize], first: usize) -> bool {
        let idx = keywords.partition_point(|&k| k <= first);
        idx.checked_sub(1)
            .map(|i| keywords[i])
            .is_some_and(|k| first - k <= KEYWORD_GAP && self.digits_before[k] == self.digits_before[first])
    }

    pub(super) fn cvv(&self, first: usize, last: usize) -> bool {
        self.near_card(first, last) || self.after_keyword(&self.cvv_kw, first)
    }

    pub(super) fn expiry(&self, first: usize, last: usize) -> bool {
        self.near_card(first, last) || self.after_keyword(&self.exp_kw, first)
    }
}

/// A group of this message's digits: character indices `first..=last`, digit count, value (when short).
#[derive(Clone, Copy)]
pub(super) struct Group {
    pub(super) first: usize,
    pub(super) last: usize,
    pub(super) len: usize,
    pub(super) value: u32,
    /// The group is the first / last of its run (this message's part).
    pub(super) run_first: bool,
    pub(super) run_last: bool,
    /// The groups next to it in its run are masked (or there are none): it stands alone.
    pub(super) lone: bool,
    pub(super) plus_before: bool,
}

pub(super) fn message_groups(runs: &[Run<'_>], ch: &[Ch]) -> Vec<Group> {
    let mut out = Vec::new();
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut masked: Vec<bool> = Vec::new();
    for run in runs {
        groups.clear();
        run.groups_into(&mut groups);
        groups.retain(|&(first, _)| first >= run.prior_len);
        let masked_group = |&(first, n): &(usize, usize)| {
            (first..first + n).all(|i| {
                let c = ch[run.chars[i - run.prior_len]];
                c.masked || c.in_card
            })
        };
        let count = groups.len();
        masked.clear();
        masked.extend(groups.iter().map(masked_group));
        for (gi, &(first, n)) in groups.iter().enumerate() {
            // Judged on the neighbours only: masked digits read like no digits, so masked text is
            // judged as the original was (idempotence).
            let prev_clear = if gi == 0 { run.prior_len == 0 } else { masked[gi - 1] };
            let lone = prev_clear && (gi + 1 == count || masked[gi + 1]);
            let value = run.values[first..first + n]
                .iter()
                .take(9)
                .fold(0u32, |acc, &d| acc * 10 + u32::from(d));
            out.push(Group {
                first: run.chars[first - run.prior_len],
                last: run.chars[first + n - 1 - run.prior_len],
                len: n,
                value,
                run_first: gi == 0 && run.prior_len == 0,
                run_last: gi + 1 == count,
                lone,
                plus_before: gi == 0 && run.plus_before,
            });
        }
    }
    out
}

pub(super) fn is_slash(c: char) -> bool {
    matches!(c, '/' | '\u{FF0F}')
}

/// Expiry dates `MM/YY` and `MM/YYYY` (one optional space around the slash), not part of a longer date.
pub(super) fn mask_expiry(runs: &[Run<'_>], ch: &mut [Ch], near: &Nearness) -> u32 {
    let groups = message_groups(runs, ch);
    let n = ch.len();
    let mut found = 0;
    for (gi, a) in groups.iter().enumerate() {
        if !(1..=2).contains(&a.len) || !(1..=12).contains(&a.value) || !a.run_last {
            continue;
        }
        if a.first > 0 && is_slash(ch[a.first - 1].c) {
            continue;
        }
        // a, optional space, slash, optional space, b
        let mut j = a.last + 1;
        if j < n && ch[j].c == ' ' {
            j += 1;
        }
        if !(j < n && is_slash(ch[j].c)) {
            continue;
        }
        j += 1;
        if j < n && ch[j].c == ' ' {
            j += 1;
        }
        let Some(b) = groups.get(gi + 1) else { continue };
        if b.first != j || !b.run_first {
            continue;
        }
        let year_ok = match b.len {
            2 => true,
            4 => (2000..=2099).contains(&b.value),
            _ => false,
        };
        // 03/12/2027 is a date, not an expiry.
        let more_date = b.last + 2 < n && is_slash(ch[b.last + 1].c) && ch[b.last + 2].digitish();
        let in_card = (a.first..=a.last).chain(b.first..=b.last).any(|k| ch[k].in_card);
        if !year_ok || more_date || in_card || !near.expiry(a.first, b.last) {
            continue;
        }
        for k in (a.first..=a.last).chain(b.first..=b.last) {
            if ch[k].digit != NOT_DIGIT {
                ch[k].masked = true;
            }
        }
        found += 1;
    }
    found
}

/// CVVs: a lone group of 3–4 digits (the neighbouring groups of its run, if any, already masked) that is not part of a
/// date, a fraction or an amount, next to a card or after a CVV keyword.
pub(super) fn mask_cvv(runs: &[Run<'_>], ch: &mut [Ch], near: &Nearness) -> u32 {
    let groups = message_groups(runs, ch);
    let mut found = 0;
    for g in &groups {
        if !(3..=4).contains(&g.len) || !g.lone || g.plus_before {
            continue;
        }
        if (g.first..=g.last).any(|k| ch[k].masked || ch[k].in_card) {
            continue;
        }
        let before = |k: usize| if g.first >= k { Some(ch[g.first - k]) } else { None };
        let after = |k: usize| ch.get(g.last + k).copied();
        let slash_next = before(1).is_some_and(|c| is_slash(c.c)) || after(1).is_some_and(|c| is_slash(c.c));
        let amount = (before(1).is_some_and(|c| c.c == ',') && before(2).is_some_and(|c| c.digitish()))
            || (after(1).is_some_and(|c| c.c == ',') && after(2).is_some_and(|c| c.digitish()));
        let glued = before(1).is_some_and(|c| c.c.is_alphabetic()) || after(1).is_some_and(|c| c.c.is_alphabetic());
        if slash_next || amount || glued || !near.cvv(g.first, g.last) {
            continue;
        }
        for c in &mut ch[g.first..=g.last] {
            c.masked = true;
        }
        found += 1;
    }
    found
}
