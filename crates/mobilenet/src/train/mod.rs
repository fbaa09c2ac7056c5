//! Training: explicit forward/backward pairs, one file per kind of layer, chained by the
//! trainable network; optimisers; the training loop with its checkpoints.
//!
//! | file | what |
//! |---|---|
//! | `conv.rs` | stem, depthwise and pointwise convolutions: forward, weight and input gradients |
//! | `bn.rs` | batch norm + activation: reference ops and the threaded pair the network runs |
//! | `head.rs` | average pool, dropout, classifier, softmax cross-entropy |
//! | `net.rs` | [`net::TrainNet`]: parameters and one step, chaining the layers |
//! | `optim.rs` | RMSprop (TF and PyTorch forms), SGD with momentum, weight decay |
//! | `trainer.rs` | epochs, evaluation, checkpoints, resume |

pub mod bn;
mod conv;
#[cfg(test)]
mod gradcheck;
pub mod head;
pub mod net;
pub mod optim;
pub mod recipe;
pub mod trainer;

/// Seeded generator for training (dropout masks, shuffling, augmentation, initialisation):
/// xorshift64*, with its whole state in one `u64` so checkpoints can store and restore it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator from a seed (any value, 0 included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform integer in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * n as f64) as usize % n.max(1)
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
}
