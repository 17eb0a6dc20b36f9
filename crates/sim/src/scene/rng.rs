//! Small deterministic random sources for scene rendering: a seeded PRNG stream and stateless
//! coordinate hashes for textures.
//!
//! Everything here is a pure function of its seed, so a frame renders the same on every run,
//! machine and thread; the OS's entropy is never consulted.

/// splitmix64's finaliser: a good 64-bit mixer, used to derive seeds and hash coordinates.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Combines a seed with a salt into a new, independent-looking seed.
pub(crate) fn derive(seed: u64, salt: u64) -> u64 {
    mix(seed ^ mix(salt))
}

/// Hash of an integer lattice point: `0..=255`, for textures that must move with an object.
#[inline]
pub(crate) fn hash2(x: i32, y: i32, seed: u32) -> u8 {
    // A cheap 32-bit integer hash (lowbias32 steps): textures need speed, not quality.
    let mut h = (x as u32).wrapping_mul(0x27d4_eb2d) ^ (y as u32).wrapping_mul(0x1656_67b1) ^ seed;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    (h >> 24) as u8
}

/// Smooth value noise in `0..=255` with a lattice of `cell` pixels.
pub(crate) fn value_noise(x: i32, y: i32, cell: i32, seed: u32) -> f32 {
    let (gx, gy) = (x.div_euclid(cell), y.div_euclid(cell));
    let fx = x.rem_euclid(cell) as f32 / cell as f32;
    let fy = y.rem_euclid(cell) as f32 / cell as f32;
    // Smoothstep weights hide the lattice.
    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let h = |dx, dy| f32::from(hash2(gx + dx, gy + dy, seed));
    let top = h(0, 0) + (h(1, 0) - h(0, 0)) * sx;
    let bottom = h(0, 1) + (h(1, 1) - h(0, 1)) * sx;
    top + (bottom - top) * sy
}

/// wyrand: a fast 64-bit PRNG stream.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(mix(seed))
    }

    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) ^ t) as u64
    }

    /// Uniform in `0..n` (`n > 0`).
    #[inline]
    pub(crate) fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }

    /// Uniform in `[0, 1)`.
    #[inline]
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[lo, hi)`.
    #[inline]
    pub(crate) fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Approximately normal with mean 0 and standard deviation 1 (Irwin-Hall of 4 uniforms:
    /// bounded tails, which is what a sensor's clipped noise looks like anyway).
    pub(crate) fn normal(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.unit()).sum();
        (s - 2.0) * 3.0f32.sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_seed_dependent() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let c = Rng::new(8).next_u64();
        assert_eq!(a, b);
        assert_ne!(a[0], c);
    }

    #[test]
    fn normal_has_unit_spread() {
        let mut r = Rng::new(1);
        let n = 20_000;
        let xs: Vec<f32> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f32>() / n as f32;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n as f32;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = Rng::new(3);
        assert!((0..1000).all(|_| r.below(10) < 10));
    }
}
