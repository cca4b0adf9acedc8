//! Seeded randomness and a keyed hash, so every run is reproducible from one `u64`.

/// SplitMix64 step: the seeding generator recommended for xoshiro, and the finaliser of
/// [`keyed_hash`].
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    mix64(*state)
}

/// SplitMix64's bijective finaliser (Stafford variant 13).
const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small, fast, seeded generator (xoshiro256**), for simulations and blind strategies.
///
/// Not cryptographic: the keyed strategy derives its key from the seed, so a deployment that
/// wants unpredictable ports must seed the pool from a secret.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut sm = seed;
        Rng {
            s: [
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
            ],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform integer in `0..n` (`0` when `n` is zero), without modulo bias
    /// (Lemire's multiply-and-reject).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// A uniform float in `[0, 1)` with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// An exponential variate with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        // 1 - unit() is in (0, 1], so the logarithm is finite.
        -mean * (1.0 - self.unit()).ln()
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// A keyed 64-bit hash of `bytes` under `key`, domain-separated by `tag`.
///
/// Each 8-byte word is absorbed through SplitMix64's bijective finaliser, so distinct inputs of
/// one length under one key never collide before the final mix. It plays the role of the keyed
/// functions F and G of RFC 6056 algorithm 4: without the key, another client cannot compute
/// the sequence of ports a peer gets.
pub fn keyed_hash(key: u64, tag: u64, bytes: &[u8]) -> u64 {
    let mut h = mix64(key ^ mix64(tag.wrapping_add(0x6A09_E667_F3BC_C909)));
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = mix64(h ^ u64::from_le_bytes(word)).wrapping_add(key);
    }
    mix64(h ^ bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_bounded() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let mut c = Rng::new(8);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        let mut counts = [0u32; 5];
        for _ in 0..50_000 {
            counts[a.below(5) as usize] += 1;
        }
        // Each bucket expects 10,000; 5 standard deviations is about 450.
        assert!(
            counts.iter().all(|&n| (9_500..10_500).contains(&n)),
            "{counts:?}"
        );
        let mean: f64 = (0..50_000).map(|_| a.exponential(2.0)).sum::<f64>() / 50_000.0;
        assert!((mean - 2.0).abs() < 0.05, "{mean}");
    }

    #[test]
    fn keyed_hash_depends_on_key_tag_and_input() {
        let x = keyed_hash(1, 0, b"10.0.0.1");
        assert_eq!(x, keyed_hash(1, 0, b"10.0.0.1"));
        assert_ne!(x, keyed_hash(2, 0, b"10.0.0.1"));
        assert_ne!(x, keyed_hash(1, 1, b"10.0.0.1"));
        assert_ne!(x, keyed_hash(1, 0, b"10.0.0.2"));
    }
}
