//! The tables of the TFLite flatbuffer schema (`tensorflow/lite/schema/schema.fbs`) that a
//! MobileNet v1 graph uses, read with the `flatbuffers` crate's verifier and accessors.
//!
//! Field ids follow the schema's field order; a field's vtable offset is `4 + 2·id`. Every
//! table is verified (offsets, lengths, nesting) before any accessor runs, so the `unsafe`
//! reads below only touch verified memory.

use flatbuffers::{
    Follow, ForwardsUOffset, InvalidFlatbuffer, Table, Vector, Verifiable, Verifier,
};

/// Vtable offset of field `id`.
const fn vt(id: u16) -> u16 {
    4 + 2 * id
}

macro_rules! table {
    ($name:ident) => {
        #[derive(Clone, Copy, Debug)]
        pub struct $name<'a> {
            tab: Table<'a>,
        }

        impl<'a> Follow<'a> for $name<'a> {
            type Inner = $name<'a>;
            unsafe fn follow(buf: &'a [u8], loc: usize) -> Self::Inner {
                // Safety: the caller (the flatbuffers crate, after verification) passes a
                // verified table position.
                $name {
                    tab: unsafe { Table::new(buf, loc) },
                }
            }
        }
    };
}

/// A verified field accessor: `get!(self, Type, id, default)`.
macro_rules! get {
    ($s:expr, $t:ty, $id:expr) => {
        // Safety: the table was verified with this field's type by `run_verifier`.
        unsafe { $s.tab.get::<$t>(vt($id), None) }
    };
    ($s:expr, $t:ty, $id:expr, $default:expr) => {
        // Safety: as above.
        unsafe { $s.tab.get::<$t>(vt($id), Some($default)) }.unwrap_or($default)
    };
}

type Offsets<'a, T> = ForwardsUOffset<Vector<'a, ForwardsUOffset<T>>>;

table!(Model);
table!(OperatorCode);
table!(SubGraph);
table!(Tensor);
table!(QuantizationParameters);
table!(Buffer);
table!(Operator);
table!(Conv2DOptions);
table!(DepthwiseConv2DOptions);
table!(Pool2DOptions);
table!(SoftmaxOptions);
table!(FullyConnectedOptions);
table!(Metadata);

/// `BuiltinOptions` union tags used by MobileNet graphs.
pub mod options_type {
    pub const CONV_2D: u8 = 1;
    pub const DEPTHWISE_CONV_2D: u8 = 2;
    pub const POOL_2D: u8 = 5;
    pub const FULLY_CONNECTED: u8 = 8;
    pub const SOFTMAX: u8 = 9;
}

impl Verifiable for Model<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<u32>("version", vt(0), false)?
            .visit_field::<Offsets<OperatorCode>>("operator_codes", vt(1), false)?
            .visit_field::<Offsets<SubGraph>>("subgraphs", vt(2), false)?
            .visit_field::<ForwardsUOffset<&str>>("description", vt(3), false)?
            .visit_field::<Offsets<Buffer>>("buffers", vt(4), false)?
            .visit_field::<ForwardsUOffset<Vector<i32>>>("metadata_buffer", vt(5), false)?
            .visit_field::<Offsets<Metadata>>("metadata", vt(6), false)?
            .finish();
        Ok(())
    }
}

impl<'a> Model<'a> {
    pub fn version(&self) -> u32 {
        get!(self, u32, 0, 0)
    }
    pub fn operator_codes(&self) -> Option<Vector<'a, ForwardsUOffset<OperatorCode<'a>>>> {
        get!(
            self,
            ForwardsUOffset<Vector<'a, ForwardsUOffset<OperatorCode>>>,
            1
        )
    }
    pub fn subgraphs(&self) -> Option<Vector<'a, ForwardsUOffset<SubGraph<'a>>>> {
        get!(
            self,
            ForwardsUOffset<Vector<'a, ForwardsUOffset<SubGraph>>>,
            2
        )
    }
    pub fn metadata(&self) -> Option<Vector<'a, ForwardsUOffset<Metadata<'a>>>> {
        get!(
            self,
            ForwardsUOffset<Vector<'a, ForwardsUOffset<Metadata>>>,
            6
        )
    }
    pub fn buffers(&self) -> Option<Vector<'a, ForwardsUOffset<Buffer<'a>>>> {
        get!(
            self,
            ForwardsUOffset<Vector<'a, ForwardsUOffset<Buffer>>>,
            4
        )
    }
}

impl Verifiable for OperatorCode<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<i8>("deprecated_builtin_code", vt(0), false)?
            .visit_field::<ForwardsUOffset<&str>>("custom_code", vt(1), false)?
            .visit_field::<i32>("version", vt(2), false)?
            .visit_field::<i32>("builtin_code", vt(3), false)?
            .finish();
        Ok(())
    }
}

impl OperatorCode<'_> {
    /// The builtin operator: the larger of the deprecated byte code and the newer i32 code
    /// (files written before the i32 field have only the byte; newer ones may have both).
    pub fn builtin(&self) -> i32 {
        let old = get!(self, i8, 0, 0) as i32;
        let new = get!(self, i32, 3, 0);
        old.max(new)
    }
}

impl Verifiable for SubGraph<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<Offsets<Tensor>>("tensors", vt(0), false)?
            .visit_field::<ForwardsUOffset<Vector<i32>>>("inputs", vt(1), false)?
            .visit_field::<ForwardsUOffset<Vector<i32>>>("outputs", vt(2), false)?
            .visit_field::<Offsets<Operator>>("operators", vt(3), false)?
            .visit_field::<ForwardsUOffset<&str>>("name", vt(4), false)?
            .finish();
        Ok(())
    }
}

impl<'a> SubGraph<'a> {
    pub fn tensors(&self) -> Option<Vector<'a, ForwardsUOffset<Tensor<'a>>>> {
        get!(
            self,
            ForwardsUOffset<Vector<'a, ForwardsUOffset<Tensor>>>,
            0
        )
    }
    pub fn inputs(&self) -> Option<Vector<'a, i32>> {
        get!(self, ForwardsUOffset<Vector<'a, i32>>, 1)
    }
    pub fn outputs(&self) -> Option<Vector<'a, i32>> {
        get!(self, ForwardsUOffset<Vector<'a, i32>>, 2)
    }
    pub fn operators(&self) -> Option<Vector<'a, ForwardsUOffset<Operator<'a>>>> {
        get!(
            self,
            ForwardsUOffset<Vector<'a, ForwardsUOffset<Operator>>>,
            3
        )
    }
}

impl Verifiable for Tensor<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<Vector<i32>>>("shape", vt(0), false)?
            .visit_field::<i8>("type", vt(1), false)?
            .visit_field::<u32>("buffer", vt(2), false)?
            .visit_field::<ForwardsUOffset<&str>>("name", vt(3), false)?
            .visit_field::<ForwardsUOffset<QuantizationParameters>>("quantization", vt(4), false)?
            .finish();
        Ok(())
    }
}

impl<'a> Tensor<'a> {
    pub fn shape(&self) -> Option<Vector<'a, i32>> {
        get!(self, ForwardsUOffset<Vector<'a, i32>>, 0)
    }
    pub fn kind(&self) -> i8 {
        get!(self, i8, 1, 0)
    }
    pub fn buffer(&self) -> u32 {
        get!(self, u32, 2, 0)
    }
    pub fn name(&self) -> Option<&'a str> {
        get!(self, ForwardsUOffset<&'a str>, 3)
    }
    pub fn quantization(&self) -> Option<QuantizationParameters<'a>> {
        get!(self, ForwardsUOffset<QuantizationParameters<'a>>, 4)
    }
}

impl Verifiable for QuantizationParameters<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<Vector<f32>>>("min", vt(0), false)?
            .visit_field::<ForwardsUOffset<Vector<f32>>>("max", vt(1), false)?
            .visit_field::<ForwardsUOffset<Vector<f32>>>("scale", vt(2), false)?
            .visit_field::<ForwardsUOffset<Vector<i64>>>("zero_point", vt(3), false)?
            .visit_field::<i32>("quantized_dimension", vt(6), false)?
            .finish();
        Ok(())
    }
}

impl<'a> QuantizationParameters<'a> {
    pub fn scale(&self) -> Option<Vector<'a, f32>> {
        get!(self, ForwardsUOffset<Vector<'a, f32>>, 2)
    }
    pub fn zero_point(&self) -> Option<Vector<'a, i64>> {
        get!(self, ForwardsUOffset<Vector<'a, i64>>, 3)
    }
    pub fn quantized_dimension(&self) -> i32 {
        get!(self, i32, 6, 0)
    }
}

impl Verifiable for Buffer<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<Vector<u8>>>("data", vt(0), false)?
            .visit_field::<u64>("offset", vt(1), false)?
            .visit_field::<u64>("size", vt(2), false)?
            .finish();
        Ok(())
    }
}

impl<'a> Buffer<'a> {
    pub fn data(&self) -> Option<&'a [u8]> {
        get!(self, ForwardsUOffset<Vector<'a, u8>>, 0).map(|v| v.bytes())
    }
    /// Offset of data stored after the flatbuffer (models over 2 GB); 0 if inline.
    pub fn offset(&self) -> u64 {
        get!(self, u64, 1, 0)
    }
}

impl Verifiable for Operator<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<u32>("opcode_index", vt(0), false)?
            .visit_field::<ForwardsUOffset<Vector<i32>>>("inputs", vt(1), false)?
            .visit_field::<ForwardsUOffset<Vector<i32>>>("outputs", vt(2), false)?
            .visit_union::<u8, _>(
                "builtin_options_type",
                vt(3),
                "builtin_options",
                vt(4),
                false,
                |tag, v, pos| {
                    use options_type::*;
                    match tag {
                        CONV_2D => v.verify_union_variant::<ForwardsUOffset<Conv2DOptions>>(
                            "Conv2DOptions",
                            pos,
                        ),
                        DEPTHWISE_CONV_2D => v
                            .verify_union_variant::<ForwardsUOffset<DepthwiseConv2DOptions>>(
                                "DepthwiseConv2DOptions",
                                pos,
                            ),
                        POOL_2D => v.verify_union_variant::<ForwardsUOffset<Pool2DOptions>>(
                            "Pool2DOptions",
                            pos,
                        ),
                        FULLY_CONNECTED => v
                            .verify_union_variant::<ForwardsUOffset<FullyConnectedOptions>>(
                                "FullyConnectedOptions",
                                pos,
                            ),
                        SOFTMAX => v.verify_union_variant::<ForwardsUOffset<SoftmaxOptions>>(
                            "SoftmaxOptions",
                            pos,
                        ),
                        // Other option tables are never read, so they need no verification.
                        _ => Ok(()),
                    }
                },
            )?
            .finish();
        Ok(())
    }
}

impl<'a> Operator<'a> {
    pub fn opcode_index(&self) -> u32 {
        get!(self, u32, 0, 0)
    }
    pub fn inputs(&self) -> Option<Vector<'a, i32>> {
        get!(self, ForwardsUOffset<Vector<'a, i32>>, 1)
    }
    pub fn outputs(&self) -> Option<Vector<'a, i32>> {
        get!(self, ForwardsUOffset<Vector<'a, i32>>, 2)
    }
    pub fn options_type(&self) -> u8 {
        get!(self, u8, 3, 0)
    }
    /// The options table, if its tag is `tag` (verified for the tags in [`options_type`]).
    fn options<T: Follow<'a, Inner = T> + 'a>(&self, tag: u8) -> Option<T> {
        if self.options_type() != tag {
            return None;
        }
        get!(self, ForwardsUOffset<T>, 4)
    }
    pub fn conv2d(&self) -> Option<Conv2DOptions<'a>> {
        self.options(options_type::CONV_2D)
    }
    pub fn depthwise(&self) -> Option<DepthwiseConv2DOptions<'a>> {
        self.options(options_type::DEPTHWISE_CONV_2D)
    }
    pub fn pool2d(&self) -> Option<Pool2DOptions<'a>> {
        self.options(options_type::POOL_2D)
    }
    pub fn fully_connected(&self) -> Option<FullyConnectedOptions<'a>> {
        self.options(options_type::FULLY_CONNECTED)
    }
    pub fn softmax(&self) -> Option<SoftmaxOptions<'a>> {
        self.options(options_type::SOFTMAX)
    }
}

impl Verifiable for Conv2DOptions<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<i8>("padding", vt(0), false)?
            .visit_field::<i32>("stride_w", vt(1), false)?
            .visit_field::<i32>("stride_h", vt(2), false)?
            .visit_field::<i8>("fused_activation_function", vt(3), false)?
            .visit_field::<i32>("dilation_w_factor", vt(4), false)?
            .visit_field::<i32>("dilation_h_factor", vt(5), false)?
            .finish();
        Ok(())
    }
}

impl Conv2DOptions<'_> {
    pub fn padding(&self) -> i8 {
        get!(self, i8, 0, 0)
    }
    pub fn stride(&self) -> (i32, i32) {
        (get!(self, i32, 2, 0), get!(self, i32, 1, 0))
    }
    pub fn activation(&self) -> i8 {
        get!(self, i8, 3, 0)
    }
    pub fn dilation(&self) -> (i32, i32) {
        (get!(self, i32, 5, 1), get!(self, i32, 4, 1))
    }
}

impl Verifiable for DepthwiseConv2DOptions<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<i8>("padding", vt(0), false)?
            .visit_field::<i32>("stride_w", vt(1), false)?
            .visit_field::<i32>("stride_h", vt(2), false)?
            .visit_field::<i32>("depth_multiplier", vt(3), false)?
            .visit_field::<i8>("fused_activation_function", vt(4), false)?
            .visit_field::<i32>("dilation_w_factor", vt(5), false)?
            .visit_field::<i32>("dilation_h_factor", vt(6), false)?
            .finish();
        Ok(())
    }
}

impl DepthwiseConv2DOptions<'_> {
    pub fn padding(&self) -> i8 {
        get!(self, i8, 0, 0)
    }
    pub fn stride(&self) -> (i32, i32) {
        (get!(self, i32, 2, 0), get!(self, i32, 1, 0))
    }
    pub fn depth_multiplier(&self) -> i32 {
        get!(self, i32, 3, 0)
    }
    pub fn activation(&self) -> i8 {
        get!(self, i8, 4, 0)
    }
    pub fn dilation(&self) -> (i32, i32) {
        (get!(self, i32, 6, 1), get!(self, i32, 5, 1))
    }
}

impl Verifiable for Pool2DOptions<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<i8>("padding", vt(0), false)?
            .visit_field::<i32>("stride_w", vt(1), false)?
            .visit_field::<i32>("stride_h", vt(2), false)?
            .visit_field::<i32>("filter_width", vt(3), false)?
            .visit_field::<i32>("filter_height", vt(4), false)?
            .visit_field::<i8>("fused_activation_function", vt(5), false)?
            .finish();
        Ok(())
    }
}

impl Pool2DOptions<'_> {
    pub fn padding(&self) -> i8 {
        get!(self, i8, 0, 0)
    }
    pub fn filter(&self) -> (i32, i32) {
        (get!(self, i32, 4, 0), get!(self, i32, 3, 0))
    }
    pub fn stride(&self) -> (i32, i32) {
        (get!(self, i32, 2, 0), get!(self, i32, 1, 0))
    }
    pub fn activation(&self) -> i8 {
        get!(self, i8, 5, 0)
    }
}

impl Verifiable for FullyConnectedOptions<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<i8>("fused_activation_function", vt(0), false)?
            .visit_field::<i8>("weights_format", vt(1), false)?
            .visit_field::<bool>("keep_num_dims", vt(2), false)?
            .finish();
        Ok(())
    }
}

impl FullyConnectedOptions<'_> {
    pub fn activation(&self) -> i8 {
        get!(self, i8, 0, 0)
    }
    pub fn weights_format(&self) -> i8 {
        get!(self, i8, 1, 0)
    }
}

impl Verifiable for Metadata<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<&str>>("name", vt(0), false)?
            .visit_field::<u32>("buffer", vt(1), false)?
            .finish();
        Ok(())
    }
}

impl<'a> Metadata<'a> {
    pub fn name(&self) -> Option<&'a str> {
        get!(self, ForwardsUOffset<&str>, 0)
    }
    pub fn buffer(&self) -> u32 {
        get!(self, u32, 1, 0)
    }
}

impl Verifiable for SoftmaxOptions<'_> {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<f32>("beta", vt(0), false)?
            .finish();
        Ok(())
    }
}

impl SoftmaxOptions<'_> {
    pub fn beta(&self) -> f32 {
        get!(self, f32, 0, 0.0)
    }
}
