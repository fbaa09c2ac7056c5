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
    /// Add the value already in the output before the bias and clamp (`C += A·B`): used to
    /// accumulate weight gradients over blocks of a batch.
    pub accumulate: bool,
}

impl<'a> Epilogue<'a> {
    /// No bias, no clamp.
    pub const fn linear() -> Epilogue<'static> {
        Epilogue {
            bias: None,
            min: f32::NEG_INFINITY,
            max: f32::INFINITY,
            accumulate: false,
        }
    }

    /// No bias, no clamp, added to the output's current value.
    pub const fn accumulating() -> Epilogue<'static> {
        Epilogue {
            bias: None,
            min: f32::NEG_INFINITY,
            max: f32::INFINITY,
            accumulate: true,
        }
    }

    /// Bias, then clamp to `[min, max]`.
    pub const fn new(bias: Option<&'a [f32]>, min: f32, max: f32) -> Epilogue<'a> {
        Epilogue {
            bias,
            min,
            max,
            accumulate: false,
        }
    }

    /// Applies the epilogue to one value `x` of channel `c` whose output currently holds
    /// `old` (the scalar definition every vectorised kernel must match).
    #[inline]
    pub fn apply_to(&self, c: usize, x: f32, old: f32) -> f32 {
        let x = if self.accumulate { x + old } else { x };
        self.apply(c, x)
    }

    /// Applies bias and clamp to one value of channel `c` (ignores `accumulate`).
    #[inline]
    pub fn apply(&self, c: usize, x: f32) -> f32 {
        let x = match self.bias {
            Some(b) => x + b[c],
            None => x,
        };
        x.max(self.min).min(self.max)
    }
}
