//! HyperLogLog distinct-count sketch with a hash that is stable across builds.

/// Register-index bits: 4096 registers, relative standard error 1.04/√4096 ≈ 1.6%.
pub const PRECISION: u32 = 12;
const REGISTERS: usize = 1 << PRECISION;

/// FNV-1a followed by the splitmix64 finalizer. FNV alone mixes the last bytes poorly (keys
/// like `user-1`, `user-2` differ only in low bits), and the finalizer spreads that over all
/// 64 bits. std's hashers are avoided because their output may change between Rust releases.
/// Bytes may come in pieces (a value serialized straight into it, as `io::Write`).
pub struct Hash64(u64);

impl Default for Hash64 {
    fn default() -> Self {
        Hash64(0xcbf2_9ce4_8422_2325)
    }
}

impl Hash64 {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        let mut h = self.0;
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    }
}

impl std::io::Write for Hash64 {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HyperLogLog {
    registers: Box<[u8]>,
}

impl Default for HyperLogLog {
    fn default() -> Self {
        Self {
            registers: vec![0; REGISTERS].into_boxed_slice(),
        }
    }
}

/// A sketch is saved as its registers in base64.
impl serde::Serialize for HyperLogLog {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.registers))
    }
}

impl<'de> serde::Deserialize<'de> for HyperLogLog {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let text = String::deserialize(d)?;
        let registers = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)?;
        if registers.len() != REGISTERS || registers.iter().any(|&r| r > 64 - PRECISION as u8 + 1) {
            return Err(serde::de::Error::custom("not a HyperLogLog sketch"));
        }
        Ok(Self {
            registers: registers.into_boxed_slice(),
        })
    }
}

impl HyperLogLog {
    pub fn insert_hash(&mut self, hash: u64) {
        let index = (hash >> (64 - PRECISION)) as usize;
        // Position of the first 1 bit among the remaining 52 bits, 53 if they are all zero.
        let rank = ((hash << PRECISION).leading_zeros().min(64 - PRECISION) + 1) as u8;
        let r = &mut self.registers[index];
        *r = (*r).max(rank);
    }

    /// Union: the result is the sketch of every value either side saw.
    pub fn merge(&mut self, other: &Self) {
        for (r, o) in self.registers.iter_mut().zip(other.registers.iter()) {
            *r = (*r).max(*o);
        }
    }

    /// Flajolet et al.'s estimator with linear counting below 2.5·m, where the raw estimate
    /// is biased. No large-range correction: with 64-bit hashes collisions are negligible.
    pub fn estimate(&self) -> f64 {
        let m = REGISTERS as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let sum: f64 = self
            .registers
            .iter()
            .map(|&r| 2f64.powi(-i32::from(r)))
            .sum();
        let zeros = self.registers.iter().filter(|&&r| r == 0).count();
        let raw = alpha * m * m / sum;
        if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash64(bytes: &[u8]) -> u64 {
        let mut h = Hash64::default();
        h.update(bytes);
        h.finish()
    }

    /// Saved sketches stay valid: the hash of a value's JSON text is the
    /// same whether it is written at once or in pieces, and the same as
    /// in every earlier build.
    #[test]
    fn a_value_hashes_the_same_written_in_pieces_and_across_builds() {
        let v: serde_json::Value = serde_json::from_str(r#"{"a":[1,2.5,null],"b":"x"}"#).unwrap();
        let mut h = Hash64::default();
        serde_json::to_writer(&mut h, &v).unwrap();
        assert_eq!(h.finish(), hash64(v.to_string().as_bytes()));
        assert_eq!(h.finish(), 0x597b_1106_1d2a_f1e5);
        assert_eq!(hash64(br#""user-1""#), 0x5eb6_ae55_5410_9ed3);
    }

    fn sketch(values: impl Iterator<Item = String>) -> HyperLogLog {
        let mut h = HyperLogLog::default();
        values.for_each(|v| h.insert_hash(hash64(v.as_bytes())));
        h
    }

    #[test]
    fn estimate_within_three_standard_errors() {
        let three_se = 3.0 * 1.04 / (REGISTERS as f64).sqrt();
        for n in [0_usize, 1, 100, 1000, 10_000, 100_000] {
            let est = sketch((0..n).map(|i| format!("\"user-{i}\""))).estimate();
            let err = (est - n as f64).abs();
            assert!(err <= three_se * n as f64 + 0.5, "n={n} estimate={est:.1}");
            if n <= 100 {
                // Linear counting is nearly exact while most registers are empty.
                assert!(err < 1.0, "n={n} estimate={est:.2}");
            }
        }
    }

    #[test]
    fn duplicates_do_not_change_the_estimate() {
        let once = sketch((0..5000).map(|i| i.to_string()));
        let thrice = sketch((0..15_000).map(|i| (i % 5000).to_string()));
        assert_eq!(once, thrice);
        assert!((once.estimate() - 5000.0).abs() < 5000.0 * 0.049);
    }

    #[test]
    fn merge_equals_sketch_of_union() {
        let mut a = sketch((0..3000).map(|i| i.to_string()));
        let b = sketch((2000..6000).map(|i| i.to_string()));
        a.merge(&b);
        assert_eq!(a, sketch((0..6000).map(|i| i.to_string())));
    }
}
