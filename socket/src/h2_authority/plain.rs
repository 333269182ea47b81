//! Turns the Huffman-coded string literals of an HPACK header block into plain ones before the
//! block reaches the HPACK decoder.
//!
//! Our HPACK crate builds its Huffman decoding table afresh for every Huffman-coded string, and
//! clients code most literals that way (`:path` on every request), so that setup was a quarter of
//! the agent's CPU per Workload API call. Here one decoder per thread is kept and reused; the
//! block is rewritten field by field with each Huffman literal replaced by its plain octets,
//! which HPACK defines to mean the same (table entry sizes count decoded octets). Only the wire
//! syntax is walked (representation prefixes, integers, string lengths): the table semantics
//! stay with the HPACK crate, which sees whatever this module cannot parse exactly as received
//! and reports it.

use std::cell::RefCell;

use loona_hpack::encoder::encode_integer_into;
use loona_hpack::huffman::HuffmanDecoder;

thread_local! {
    static HUFFMAN: RefCell<HuffmanDecoder> = RefCell::new(HuffmanDecoder::new());
}

/// The largest integer accepted (RFC 7541 section 5.1 lets decoders cap them); far above any
/// length a bounded block can hold.
const MAX_INT: usize = 1 << 24;

/// `block` with every Huffman-coded literal in plain form, or `None` when it has none or does
/// not parse (then the caller decodes the original, and the HPACK crate reports any fault).
pub(super) fn without_huffman(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len() + block.len() / 2);
    let mut changed = false;
    let mut at = 0;
    while at < block.len() {
        let first = block[at];
        // RFC 7541 section 6: indexed (1), literal with indexing (01), size update (001),
        // literal never indexed (0001) or without indexing (0000).
        let (prefix, literal) = match first {
            b if b & 0x80 != 0 => (7, false),
            b if b & 0x40 != 0 => (6, true),
            b if b & 0x20 != 0 => (5, false),
            _ => (4, true),
        };
        let (index, used) = integer(&block[at..], prefix)?;
        out.extend_from_slice(&block[at..at + used]);
        at += used;
        if literal {
            if index == 0 {
                at = string(block, at, &mut out, &mut changed)?;
            }
            at = string(block, at, &mut out, &mut changed)?;
        }
    }
    changed.then_some(out)
}

/// Copies the string literal at `block[at..]` to `out`, plain; returns where it ends.
fn string(block: &[u8], at: usize, out: &mut Vec<u8>, changed: &mut bool) -> Option<usize> {
    let huffman = *block.get(at)? & 0x80 != 0;
    let (len, used) = integer(&block[at..], 7)?;
    let start = at + used;
    let end = start.checked_add(len).filter(|&e| e <= block.len())?;
    if huffman {
        let plain = HUFFMAN.with(|d| d.borrow_mut().decode(&block[start..end]).ok())?;
        encode_integer_into(plain.len(), 7, 0, out).ok()?;
        out.extend_from_slice(&plain);
        *changed = true;
    } else {
        out.extend_from_slice(&block[at..end]);
    }
    Some(end)
}

/// An HPACK integer with a `prefix`-bit prefix at the start of `buf` (RFC 7541 section 5.1):
/// its value and how many octets it took.
fn integer(buf: &[u8], prefix: u8) -> Option<(usize, usize)> {
    let mask = (1usize << prefix) - 1;
    let mut value = usize::from(*buf.first()?) & mask;
    if value < mask {
        return Some((value, 1));
    }
    let mut shift = 0u32;
    for (i, &b) in buf.iter().enumerate().skip(1) {
        value += usize::from(b & 0x7f) << shift;
        if value > MAX_INT {
            return None;
        }
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
        shift += 7;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Decoder;

    /// RFC 7541 appendix C.4.1: a request whose literals are Huffman coded.
    const C41: &[u8] = &[
        0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90,
        0xf4, 0xff,
    ];

    fn decoded(block: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        Decoder::new().decode(block).unwrap()
    }

    #[test]
    fn huffman_literals_become_plain_with_the_same_meaning() {
        let plain = without_huffman(C41).unwrap();
        assert_eq!(decoded(&plain), decoded(C41));
        assert!(plain.windows(15).any(|w| w == b"www.example.com"));
    }

    #[test]
    fn blocks_without_huffman_are_left_alone() {
        // RFC 7541 appendix C.3.1: the same request with plain literals.
        let mut block = vec![0x82, 0x86, 0x84, 0x41, 0x0f];
        block.extend_from_slice(b"www.example.com");
        assert_eq!(without_huffman(&block), None);
    }

    #[test]
    fn literal_names_and_multi_octet_lengths_are_walked() {
        let value = [b'v'; 200];
        let mut enc = loona_hpack::Encoder::new();
        let mut block = enc.encode([(&b"x-long"[..], &value[..])]);
        // A Huffman-coded literal after it must still be found.
        block.extend_from_slice(&C41[3..]);
        let plain = without_huffman(&block).unwrap();
        assert_eq!(decoded(&plain), decoded(&block));
    }

    #[test]
    fn malformed_blocks_are_not_parsed() {
        for bad in [
            &[0x41, 0x8c, 0xf1][..],             // string shorter than its length
            &[0x7f, 0xff, 0xff, 0xff, 0xff][..], // integer without an end
            &[0x40][..],                         // literal without its name
            &[0x41, 0x81, 0xff][..],             // Huffman code running into EOS
        ] {
            assert_eq!(without_huffman(bad), None, "{bad:02x?}");
        }
    }
}
