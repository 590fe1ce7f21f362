//! The fast path of [`super::parse`]: a reader specialised to the contract's
//! schema, for the shape nearly every message has.
//!
//! It reads the known fields of the contract, strings without escapes,
//! plain non-negative integers, `true`, `false` and `null`, with any JSON
//! whitespace between tokens, and gives up (returns `None`) on anything
//! else: an escape, an unknown or repeated key, a missing field, a number
//! with a fraction or an exponent, a value of the wrong type. serde_json then
//! reads the message, so every error, and every rare form (a field added to
//! the contract later, included), is serde's.
//!
//! The one promise: when this reader returns a [`RawEvent`], it is the one
//! serde_json reads from the same text. `agrees_with_serde` checks it; the
//! unit tests, a property test and the `parse_event` fuzz target call it.

use std::borrow::Cow;

use super::{CardType, Channel, Kind, Outcome, Platform, RawAccount, RawCard, RawDevice, RawEvent};

/// Reads `text` as one attempt event, or `None` when it is not of the common
/// shape (see the module documentation).
pub(super) fn read(text: &str) -> Option<RawEvent<'_>> {
    let mut r = Reader { text, at: 0 };
    let raw = r.event()?;
    r.skip_ws();
    (r.at == text.len()).then_some(raw)
}

/// Whether the fast path, when it reads `text` at all, reads what serde_json
/// reads. For tests and fuzzing.
#[doc(hidden)]
pub fn agrees_with_serde(text: &str) -> bool {
    match read(text) {
        None => true,
        Some(fast) => serde_json::from_str::<RawEvent<'_>>(text).is_ok_and(|slow| slow == fast),
    }
}

/// Whether the fast path reads `text` (rather than leaving it to serde_json).
#[doc(hidden)]
pub fn reads(text: &str) -> bool {
    read(text).is_some()
}

struct Reader<'a> {
    text: &'a str,
    at: usize,
}

/// Stores a member's value in `slot`: `value` is what the reader made of it
/// (`None`: give up; `Some(None)`: `null`). `bit` marks the member in `seen`,
/// so that a repeated key, which serde refuses, gives up too.
fn store<T>(seen: &mut u16, bit: u16, slot: &mut Option<T>, value: Option<Option<T>>) -> Option<()> {
    if *seen & bit != 0 {
        return None;
    }
    *seen |= bit;
    *slot = value?;
    Some(())
}

/// Length of the run of bytes before the first `"`, `\\` or control
/// character: where a string without escapes ends. `None` when there is none.
/// Reads eight bytes at a time (most strings of an event are 8 to 40 bytes).
#[inline]
fn plain_len(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut rest = bytes;
    while let Some((chunk, next)) = rest.split_first_chunk::<8>() {
        let w = u64::from_le_bytes(*chunk);
        // A byte's high bit is set where it is zero (after the XOR) or below
        // 0x20; borrows can only mark bytes above the first such byte, and
        // only the first is used.
        let quote = w ^ (ONES * b'"' as u64);
        let backslash = w ^ (ONES * b'\\' as u64);
        let found = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | w.wrapping_sub(ONES * 0x20) & !w)
            & HIGHS;
        if found != 0 {
            return Some(bytes.len() - rest.len() + found.trailing_zeros() as usize / 8);
        }
        rest = next;
    }
    rest.iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| bytes.len() - rest.len() + i)
}

impl<'a> Reader<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes().get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes().get(self.at).copied()
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.at += 1)
    }

    /// `word` (`null`, `true`, `false`) if it comes next.
    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_ws();
        let found = self.bytes()[self.at..].starts_with(word.as_bytes());
        if found {
            self.at += word.len();
        }
        found
    }

    /// A string without escapes or control characters (which serde refuses
    /// unescaped); anything else gives up.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let len = plain_len(self.bytes().get(start..)?)?;
        if self.bytes().get(start + len) != Some(&b'"') {
            return None;
        }
        self.at = start + len + 1;
        // SAFETY: `start` follows an ASCII quote and `start + len` is one,
        // both within `text`, so both are character boundaries of a `str`
        // (what `&text[start..start + len]` would check again).
        #[allow(unsafe_code)]
        Some(unsafe { self.text.get_unchecked(start..start + len) })
    }

    /// `null` as `None`, anything else through `value`.
    fn nullable<T>(&mut self, value: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.eat_word("null") {
            return Some(None);
        }
        value(self).map(Some)
    }

    fn cow(&mut self) -> Option<Cow<'a, str>> {
        self.string().map(Cow::Borrowed)
    }

    fn optional_cow(&mut self) -> Option<Option<Cow<'a, str>>> {
        self.nullable(Self::cow)
    }

    /// A contract enum, by the names its declaration gives (`from_wire`).
    fn enumerated<T>(&mut self, from_wire: fn(&str) -> Option<T>) -> Option<T> {
        from_wire(self.string()?)
    }

    /// A non-negative integer as JSON writes one (no leading zero, no sign,
    /// fraction or exponent) that fits in a `u64`.
    fn integer(&mut self) -> Option<u64> {
        self.skip_ws();
        let digits = self.bytes()[self.at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let text = &self.text[self.at..self.at + digits];
        if digits == 0 || (digits > 1 && text.starts_with('0')) {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.bytes().get(self.at + digits) {
            return None;
        }
        self.at += digits;
        text.parse().ok()
    }

    fn boolean(&mut self) -> Option<bool> {
        if self.eat_word("true") {
            Some(true)
        } else if self.eat_word("false") {
            Some(false)
        } else {
            None
        }
    }

    /// An object: `field` reads each member's value given its key.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            field(self, key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn event(&mut self) -> Option<RawEvent<'a>> {
        let (mut event_id, mut ts, mut kind, mut outcome, mut card, mut account) = (None, None, None, None, None, None);
        let (mut device, mut ip, mut channel) = (None, None, None);
        let mut seen = 0;
        self.object(|r, key| match key {
            "event_id" => store(&mut seen, 1, &mut event_id, r.cow().map(Some)),
            "ts" => store(&mut seen, 2, &mut ts, r.cow().map(Some)),
            "kind" => store(&mut seen, 4, &mut kind, r.enumerated(Kind::from_wire).map(Some)),
            "outcome" => store(&mut seen, 8, &mut outcome, r.enumerated(Outcome::from_wire).map(Some)),
            "card" => store(&mut seen, 16, &mut card, r.card().map(Some)),
            "account" => store(&mut seen, 32, &mut account, r.account().map(Some)),
            "device" => store(&mut seen, 64, &mut device, r.nullable(Self::device)),
            "ip" => store(&mut seen, 128, &mut ip, r.optional_cow()),
            "channel" => store(
                &mut seen,
                256,
                &mut channel,
                r.nullable(|r| r.enumerated(Channel::from_wire)),
            ),
            _ => None,
        })?;
        Some(RawEvent {
            event_id: event_id?,
            ts: ts?,
            kind: kind?,
            outcome: outcome?,
            card: card?,
            account: account?,
            device,
            ip,
            channel,
        })
    }

    fn card(&mut self) -> Option<RawCard<'a>> {
        let mut card = RawCard {
            code_hash: None,
            code: None,
            brand: None,
            card_type: None,
            face_value: None,
            currency: None,
            batch: None,
            bound_account: None,
        };
        let mut seen = 0;
        self.object(|r, key| match key {
            "code_hash" => store(&mut seen, 1, &mut card.code_hash, r.optional_cow()),
            "code" => store(&mut seen, 2, &mut card.code, r.optional_cow()),
            "brand" => store(&mut seen, 4, &mut card.brand, r.optional_cow()),
            "type" => store(
                &mut seen,
                8,
                &mut card.card_type,
                r.nullable(|r| r.enumerated(CardType::from_wire)),
            ),
            "face_value" => store(&mut seen, 16, &mut card.face_value, r.nullable(Self::integer)),
            "currency" => store(&mut seen, 32, &mut card.currency, r.optional_cow()),
            "batch" => store(&mut seen, 64, &mut card.batch, r.optional_cow()),
            "bound_account" => store(&mut seen, 128, &mut card.bound_account, r.optional_cow()),
            _ => None,
        })?;
        Some(card)
    }

    fn account(&mut self) -> Option<RawAccount<'a>> {
        let (mut id, mut created_at, mut verified, mut country) = (None, None, None, None);
        let mut seen = 0;
        self.object(|r, key| match key {
            "id" => store(&mut seen, 1, &mut id, r.cow().map(Some)),
            "created_at" => store(&mut seen, 2, &mut created_at, r.optional_cow()),
            "verified" => store(&mut seen, 4, &mut verified, r.nullable(Self::boolean)),
            "country" => store(&mut seen, 8, &mut country, r.optional_cow()),
            _ => None,
        })?;
        Some(RawAccount {
            id: id?,
            created_at,
            verified,
            country,
        })
    }

    fn device(&mut self) -> Option<RawDevice<'a>> {
        let (mut fingerprint, mut platform) = (None, None);
        let mut seen = 0;
        self.object(|r, key| match key {
            "fingerprint" => store(&mut seen, 1, &mut fingerprint, r.optional_cow()),
            "platform" => store(
                &mut seen,
                2,
                &mut platform,
                r.nullable(|r| r.enumerated(Platform::from_wire)),
            ),
            _ => None,
        })?;
        Some(RawDevice { fingerprint, platform })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// Eight bytes at a time finds what one at a time finds.
        #[test]
        fn plain_len_finds_the_first_stop(bytes in proptest::collection::vec(
            prop_oneof![8 => 0x20u8..0x7f, 1 => Just(b'"'), 1 => Just(b'\\'), 1 => 0u8..0x20, 2 => 0x7fu8..=0xff],
            0..40,
        )) {
            let naive = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            prop_assert_eq!(super::plain_len(&bytes), naive);
        }
    }
}
