//! Post-ops applied in the pass that writes a layer's output.

/// What happens to each output value before it is stored: add the per-channel `bias` (if
/// any), then clamp to `[min, max]`.
///
/// ReLU is `min = 0, max = ∞`, ReLU6 is `min = 0, max = 6`, a linear layer is `±∞`. Batch
/// norm is folded into the weights and `bias` at load time, so this is all a layer needs.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// One value per output channel, or `None` for no bias.
    pub bias: Option<&'a [f32]>,
    /// Lower clamp bound.
    pub min: f32,
    /// Upper clamp bound.
    pub max: f32,
}

impl<'a> Epilogue<'a> {
    /// No bias, no clamp.
    pub const fn linear() -> Epilogue<'static> {
        Epilogue {
            bias: None,
            min: f32::NEG_INFINITY,
            max: f32::INFINITY,
        }
    }

    /// Bias, then clamp to `[min, max]`.
    pub const fn new(bias: Option<&'a [f32]>, min: f32, max: f32) -> Epilogue<'a> {
        Epilogue { bias, min, max }
    }

    /// Applies the epilogue to one value of channel `c` (the scalar definition every
    /// vectorised kernel must match).
    #[inline]
    pub fn apply(&self, c: usize, x: f32) -> f32 {
        let x = match self.bias {
            Some(b) => x + b[c],
            None => x,
        };
        x.max(self.min).min(self.max)
    }
}
