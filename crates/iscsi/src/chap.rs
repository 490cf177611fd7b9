//! CHAP (RFC 1994 with MD5, as RFC 7143 12.1.3 uses it): challenges,
//! responses, and the MD5 they need.

/// MD5 digest (RFC 1321).
pub fn md5(data: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i: u32| ((f64::from(i) + 1.0).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_le_bytes());
    let (mut a0, mut b0, mut c0, mut d0) = (
        0x6745_2301u32,
        0xefcd_ab89u32,
        0x98ba_dcfeu32,
        0x1032_5476u32,
    );
    for chunk in msg.chunks_exact(64) {
        let m: Vec<u32> = chunk
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f2 = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f2.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    let mut out = [0u8; 16];
    for (i, v) in [a0, b0, c0, d0].iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// CHAP response: MD5(identifier || secret || challenge).
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut v = Vec::with_capacity(1 + secret.len() + challenge.len());
    v.push(id);
    v.extend_from_slice(secret);
    v.extend_from_slice(challenge);
    md5(&v)
}

/// `0x`-prefixed hex, as CHAP values are sent.
pub fn to_hex(b: &[u8]) -> String {
    let mut s = String::from("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Decodes a CHAP binary value (`0x` hex; `0b` base64 is not accepted).
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let h = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if h.is_empty() || h.len() % 2 != 0 || h.len() > 2048 {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Fills `buf` from the kernel's random source (`getrandom`).
pub fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let r = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(std::io::Error::other("getrandom returned no bytes"));
        }
        done += r as usize;
    }
    Ok(())
}

/// Length of the challenges sent (bytes).
pub const CHALLENGE_LEN: usize = 16;

/// A CHAP identifier and challenge with bytes from `fill`; an error when
/// `fill` fails (there is no fallback: a predictable challenge would let a
/// recorded response be replayed, so the login must fail instead).
pub fn challenge_with(
    fill: impl FnOnce(&mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<(u8, Vec<u8>)> {
    let mut b = vec![0u8; 1 + CHALLENGE_LEN];
    fill(&mut b)?;
    let id = b[0];
    b.remove(0);
    Ok((id, b))
}

/// A CHAP identifier and challenge from the kernel's random source.
pub fn challenge() -> std::io::Result<(u8, Vec<u8>)> {
    challenge_with(getrandom_fill)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_vectors() {
        assert_eq!(to_hex(&md5(b"")), "0xd41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            to_hex(&md5(b"The quick brown fox jumps over the lazy dog")),
            "0x9e107d9d372bb6826bd81d3542a419d6"
        );
        let long = vec![b'a'; 1000];
        assert_eq!(to_hex(&md5(&long)), "0xcabe45dcc9ae5b66ba86600cca6b8ba8");
    }

    #[test]
    fn challenge_fails_without_randomness() {
        let r = challenge_with(|_| Err(std::io::Error::other("no entropy")));
        assert!(r.is_err(), "a challenge without randomness: {r:?}");
        let (id, c) = challenge_with(|b| {
            b.fill(7);
            Ok(())
        })
        .unwrap();
        assert_eq!((id, c.len()), (7, CHALLENGE_LEN));
        let (_, a) = challenge().unwrap();
        let (_, b) = challenge().unwrap();
        assert_ne!(a, b, "two kernel challenges are equal");
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(from_hex("0x01ff").unwrap(), vec![1, 255]);
        assert!(from_hex("0x1").is_none());
        assert!(from_hex("12").is_none());
        assert!(from_hex("0xzz").is_none());
    }
}
