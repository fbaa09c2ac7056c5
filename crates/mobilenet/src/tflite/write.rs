//! Writing a [`Graph`] as a `.tflite` flatbuffer (schema version 3) with the `flatbuffers`
//! crate's builder: the inverse of [`super::read`] for the operators MobileNet uses, so that
//! post-training-quantized models run in TFLite itself.
//!
//! Field slots are `4 + 2·id` with the ids of `tensorflow/lite/schema/schema.fbs`.

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use super::{builtin, ElementType, FusedActivation, Graph, OpKind, TfPadding};

/// Vtable slot of field `id`.
const fn slot(id: u16) -> u16 {
    4 + 2 * id
}

fn type_code(kind: ElementType) -> i8 {
    match kind {
        ElementType::F32 => 0,
        ElementType::I32 => 2,
        ElementType::U8 => 3,
        ElementType::I8 => 9,
        ElementType::Other(c) => c,
    }
}

fn activation_code(a: FusedActivation) -> i8 {
    match a {
        FusedActivation::None => 0,
        FusedActivation::Relu => 1,
        FusedActivation::Relu6 => 3,
        FusedActivation::Other(c) => c,
    }
}

fn padding_code(p: TfPadding) -> i8 {
    match p {
        TfPadding::Same => 0,
        TfPadding::Valid => 1,
    }
}

/// Builtin code, operator version (as TFLite's converter sets them for int8/uint8/float
/// graphs) and `BuiltinOptions` tag of an operator.
fn op_code(kind: &OpKind, int8: bool) -> (i32, i32, u8) {
    let v = |q: i32| if int8 { q } else { 1 };
    match kind {
        OpKind::Conv2d { .. } => (builtin::CONV_2D, v(3), 1),
        OpKind::Depthwise { .. } => (builtin::DEPTHWISE_CONV_2D, v(3), 2),
        OpKind::AvgPool { .. } => (builtin::AVERAGE_POOL_2D, v(2), 5),
        OpKind::FullyConnected { .. } => (builtin::FULLY_CONNECTED, v(4), 8),
        OpKind::Reshape => (builtin::RESHAPE, 1, 17),
        OpKind::Pad { .. } => (builtin::PAD, v(2), 22),
        OpKind::Softmax { .. } => (builtin::SOFTMAX, v(2), 9),
    }
}

/// Serialises `graph` (tensors with their data and quantization, operators, metadata).
pub fn write(graph: &Graph) -> Vec<u8> {
    let mut b = FlatBufferBuilder::with_capacity(1 << 20);
    let int8 = graph.tensors.iter().any(|t| t.kind == ElementType::I8);

    // Buffers: 0 is the empty buffer, then one per tensor with data, then metadata.
    let mut buffers = vec![table(&mut b, |_| {})];
    let mut tensor_buffer = Vec::with_capacity(graph.tensors.len());
    for t in &graph.tensors {
        if t.data.is_empty() {
            tensor_buffer.push(0u32);
            continue;
        }
        let data = b.create_vector(&t.data);
        tensor_buffer.push(buffers.len() as u32);
        buffers.push(table(&mut b, |b| b.push_slot_always(slot(0), data)));
    }
    let mut metadata = Vec::new();
    for (name, bytes) in &graph.metadata {
        let data = b.create_vector(bytes);
        let index = buffers.len() as u32;
        buffers.push(table(&mut b, |b| b.push_slot_always(slot(0), data)));
        let name = b.create_string(name);
        metadata.push(table(&mut b, |b| {
            b.push_slot_always(slot(0), name);
            b.push_slot::<u32>(slot(1), index, 0);
        }));
    }

    let mut tensors = Vec::with_capacity(graph.tensors.len());
    for (t, &buffer) in graph.tensors.iter().zip(&tensor_buffer) {
        let shape: Vec<i32> = t.shape.iter().map(|&d| d as i32).collect();
        let shape = b.create_vector(&shape);
        let name = b.create_string(&t.name);
        let quant = t.quantization.as_ref().map(|q| {
            let scale = b.create_vector(&q.scale);
            let zp = b.create_vector(&q.zero_point);
            table(&mut b, |b| {
                b.push_slot_always(slot(2), scale);
                b.push_slot_always(slot(3), zp);
                b.push_slot::<i32>(slot(6), q.axis as i32, 0);
            })
        });
        tensors.push(table(&mut b, |b| {
            b.push_slot_always(slot(0), shape);
            b.push_slot::<i8>(slot(1), type_code(t.kind), 0);
            b.push_slot::<u32>(slot(2), buffer, 0);
            b.push_slot_always(slot(3), name);
            if let Some(q) = quant {
                b.push_slot_always(slot(4), q);
            }
        }));
    }

    let mut codes: Vec<(i32, i32)> = Vec::new();
    let mut operators = Vec::with_capacity(graph.ops.len());
    for op in &graph.ops {
        let (code, version, tag) = op_code(&op.kind, int8);
        let index = match codes.iter().position(|c| c.0 == code) {
            Some(i) => i,
            None => {
                codes.push((code, version));
                codes.len() - 1
            }
        };
        let options = options(&mut b, &op.kind);
        let inputs: Vec<i32> = op
            .inputs
            .iter()
            .map(|i| i.map_or(-1, |i| i as i32))
            .collect();
        let outputs: Vec<i32> = op.outputs.iter().map(|&i| i as i32).collect();
        let (inputs, outputs) = (b.create_vector(&inputs), b.create_vector(&outputs));
        operators.push(table(&mut b, |b| {
            b.push_slot::<u32>(slot(0), index as u32, 0);
            b.push_slot_always(slot(1), inputs);
            b.push_slot_always(slot(2), outputs);
            b.push_slot::<u8>(slot(3), tag, 0);
            b.push_slot_always(slot(4), options);
        }));
    }

    let tensors = b.create_vector(&tensors);
    let inputs: Vec<i32> = graph.inputs.iter().map(|&i| i as i32).collect();
    let outputs: Vec<i32> = graph.outputs.iter().map(|&i| i as i32).collect();
    let (inputs, outputs) = (b.create_vector(&inputs), b.create_vector(&outputs));
    let operators = b.create_vector(&operators);
    let name = b.create_string("main");
    let subgraph = table(&mut b, |b| {
        b.push_slot_always(slot(0), tensors);
        b.push_slot_always(slot(1), inputs);
        b.push_slot_always(slot(2), outputs);
        b.push_slot_always(slot(3), operators);
        b.push_slot_always(slot(4), name);
    });
    let subgraphs = b.create_vector(&[subgraph]);
    let codes: Vec<_> = codes
        .iter()
        .map(|&(code, version)| {
            table(&mut b, |b| {
                // Codes below 127 also go in the deprecated byte field older readers use.
                b.push_slot::<i8>(slot(0), code.min(127) as i8, 0);
                b.push_slot::<i32>(slot(2), version, 1);
                b.push_slot::<i32>(slot(3), code, 0);
            })
        })
        .collect();
    let codes = b.create_vector(&codes);
    let buffers = b.create_vector(&buffers);
    let metadata = b.create_vector(&metadata);
    let description = b.create_string("mobilenet (Rust)");
    let model = table(&mut b, |b| {
        b.push_slot::<u32>(slot(0), 3, 0);
        b.push_slot_always(slot(1), codes);
        b.push_slot_always(slot(2), subgraphs);
        b.push_slot_always(slot(3), description);
        b.push_slot_always(slot(4), buffers);
        b.push_slot_always(slot(6), metadata);
    });
    b.finish(model, Some("TFL3"));
    b.finished_data().to_vec()
}

/// A table whose fields `fields` pushes.
fn table<'b>(
    b: &mut FlatBufferBuilder<'b>,
    fields: impl FnOnce(&mut FlatBufferBuilder<'b>),
) -> WIPOffset<flatbuffers::TableFinishedWIPOffset> {
    let start = b.start_table();
    fields(b);
    b.end_table(start)
}

/// The operator's options table.
fn options<'b>(
    b: &mut FlatBufferBuilder<'b>,
    kind: &OpKind,
) -> WIPOffset<flatbuffers::TableFinishedWIPOffset> {
    match kind {
        OpKind::Conv2d {
            stride,
            padding,
            activation,
        } => table(b, |b| {
            b.push_slot::<i8>(slot(0), padding_code(*padding), 0);
            b.push_slot::<i32>(slot(1), stride.1 as i32, 0);
            b.push_slot::<i32>(slot(2), stride.0 as i32, 0);
            b.push_slot::<i8>(slot(3), activation_code(*activation), 0);
            b.push_slot::<i32>(slot(4), 1, 0);
            b.push_slot::<i32>(slot(5), 1, 0);
        }),
        OpKind::Depthwise {
            stride,
            padding,
            activation,
            multiplier,
        } => table(b, |b| {
            b.push_slot::<i8>(slot(0), padding_code(*padding), 0);
            b.push_slot::<i32>(slot(1), stride.1 as i32, 0);
            b.push_slot::<i32>(slot(2), stride.0 as i32, 0);
            b.push_slot::<i32>(slot(3), *multiplier as i32, 0);
            b.push_slot::<i8>(slot(4), activation_code(*activation), 0);
            b.push_slot::<i32>(slot(5), 1, 0);
            b.push_slot::<i32>(slot(6), 1, 0);
        }),
        OpKind::AvgPool {
            filter,
            stride,
            padding,
        } => table(b, |b| {
            b.push_slot::<i8>(slot(0), padding_code(*padding), 0);
            b.push_slot::<i32>(slot(1), stride.1 as i32, 0);
            b.push_slot::<i32>(slot(2), stride.0 as i32, 0);
            b.push_slot::<i32>(slot(3), filter.1 as i32, 0);
            b.push_slot::<i32>(slot(4), filter.0 as i32, 0);
        }),
        OpKind::FullyConnected { activation } => table(b, |b| {
            b.push_slot::<i8>(slot(0), activation_code(*activation), 0);
        }),
        OpKind::Softmax { beta } => table(b, |b| {
            b.push_slot::<f32>(slot(0), *beta, 0.0);
        }),
        OpKind::Reshape | OpKind::Pad { .. } => table(b, |_| {}),
    }
}
