//! `relaydesk mask`: mask a conversation given as lines, for operators testing their policy.

use std::collections::VecDeque;
use std::io::{self, BufRead, Read, Write};

use super::MaskedText;
use super::conversation::{ConversationMasker, SenderKey};
use super::policy::Masker;

/// The longest input line [`mask_lines`] accepts, in bytes (chat messages are far shorter).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Why [`mask_lines`] stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaskIoError {
    /// Reading the input or writing the output failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// An input line is not valid UTF-8 (the lines before it were printed).
    #[error("line {line} is not valid UTF-8 (first invalid byte at offset {valid_up_to})")]
    InvalidUtf8 {
        /// 1-based line number.
        line: u64,
        /// Byte offset in the line of the first byte that is not UTF-8.
        valid_up_to: usize,
    },
    /// An input line is longer than [`MAX_LINE_BYTES`] (the lines before it were printed).
    #[error("line {line} is longer than {max} bytes")]
    LineTooLong {
        /// 1-based line number.
        line: u64,
        /// The limit in bytes.
        max: usize,
    },
}

/// Writes one masked line and its line break (without going through `fmt`).
fn write_line(output: &mut impl Write, line: &MaskedText) -> io::Result<()> {
    output.write_all(line.as_str().as_bytes())?;
    output.write_all(b"\n")
}

/// Masks a conversation read from `input`: each line (`\n` or `\r\n` terminated) is one message of a
/// single sender, in order. Writes each message as the agent finally sees it, one line each, in order.
///
/// A later message can amend earlier ones (a card number split across lines), so a line is written only
/// once no later line can change it: usually right after the next line was read, at the latest at the end
/// of the input. On an error, the lines before the bad one are written first, then the error is returned.
pub fn mask_lines(masker: &Masker, mut input: impl BufRead, mut output: impl Write) -> Result<(), MaskIoError> {
    let mut conversation: ConversationMasker<SenderKey> = ConversationMasker::new(masker.clone());
    let sender = SenderKey(0);
    let mut held: VecDeque<MaskedText> = VecDeque::new();
    let mut raw: Vec<u8> = Vec::new();
    let mut line_no: u64 = 0;
    let result = loop {
        raw.clear();
        let read = (&mut input)
            .take(MAX_LINE_BYTES as u64 + 2)
            .read_until(b'\n', &mut raw)?;
        if read == 0 {
            break Ok(());
        }
        line_no += 1;
        let terminated = raw.last() == Some(&b'\n');
        if terminated {
            raw.pop();
            if raw.last() == Some(&b'\r') {
                raw.pop();
            }
        }
        if raw.len() > MAX_LINE_BYTES {
            break Err(MaskIoError::LineTooLong {
                line: line_no,
                max: MAX_LINE_BYTES,
            });
        }
        let text = match std::str::from_utf8(&raw) {
            Ok(t) => t,
            Err(e) => {
                break Err(MaskIoError::InvalidUtf8 {
                    line: line_no,
                    valid_up_to: e.valid_up_to(),
                });
            }
        };
        let outcome = conversation.mask(sender, text);
        for amendment in outcome.amendments() {
            if let Some(idx) = held.len().checked_sub(amendment.back) {
                held[idx] = amendment.text;
            }
        }
        held.push_back(outcome.text);
        let open = conversation.open_messages(&sender);
        while held.len() > open {
            if let Some(line) = held.pop_front() {
                write_line(&mut output, &line)?;
            }
        }
    };
    for line in held.drain(..) {
        write_line(&mut output, &line)?;
    }
    output.flush()?;
    result
}
