//! AMX tiles for the int8 GEMM: `tdpbusd` on 16×64 by 64×16 byte tiles, for depths that are
//! a multiple of 64 (the others go to the VNNI kernel).

use std::arch::asm;
use std::arch::x86_64::*;

use super::super::requant::x86::Rq16;
use super::{vnni, Job, NR};

/// Rows of a block: two 16-row A tiles.
const MB: usize = 32;

/// Tile configuration (palette 1): tiles 0–3 hold C (16 rows × 16 i32), 4–5 A (16 rows
/// × `kc` bytes), 6–7 B (`kc/4` quads × 16 columns × 4 bytes).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new(kc: usize) -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut set = |t: usize, bytes: usize, rows: usize| {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&(bytes as u16).to_le_bytes());
            c[48 + t] = rows as u8;
        };
        for t in 0..4 {
            set(t, 64, 16);
        }
        set(4, kc, 16);
        set(5, kc, 16);
        set(6, 64, kc / 4);
        set(7, 64, kc / 4);
        TileConfig(c)
    }
}

/// Whether the tiles take depth `k`: chunks of 64, or one chunk of `k < 64` (a multiple
/// of 4, as packed B's quads are).
pub(super) fn takes(k: usize) -> bool {
    k.is_multiple_of(64) || (k < 64 && k.is_multiple_of(4))
}

/// The GEMM on AMX tiles: 32-row blocks of A by 32-column panels, K in chunks of `kc`
/// bytes (64, or all of a short K). A ragged last block is copied into a zero-padded
/// buffer first. Each block's products land in four tiles, are stored to a 4 KB buffer
/// and requantized from there. Depths the tiles do not take go to the VNNI kernel.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
pub(super) unsafe fn gemm(job: Job) {
    if !takes(job.b.k) {
        // Safety: as qgemm_ptr's.
        unsafe { vnni::gemm(job) };
        return;
    }
    let Job {
        m,
        a,
        lda,
        b,
        row_coeff,
        rq,
        c,
        ldc,
        panels,
    } = job;
    let k = b.k;
    let kc = k.min(64);
    let chunks = k / kc;
    let blocks = m.div_ceil(MB);
    // The last block's rows, zero-padded to MB (only when ragged).
    let ragged = m % MB;
    let mut tail = vec![0u8; if ragged > 0 { MB * k } else { 0 }];
    // Safety: A holds m rows of lda ≥ k bytes (checked by qgemm).
    unsafe {
        for r in 0..ragged {
            let src = std::slice::from_raw_parts(a.add(((blocks - 1) * MB + r) * lda), k);
            tail[r * k..][..k].copy_from_slice(src);
        }
    }
    // Safety: as above; AVX-512 BW is among this function's features.
    let sums = unsafe { vnni::row_terms(m, a, lda, k, row_coeff) };
    #[repr(C, align(64))]
    struct Buf([[i32; NR]; MB]);
    let mut buf = Buf([[0; NR]; MB]);
    let out = buf.0.as_mut_ptr().cast::<u8>();
    let row_bytes = NR * 4;
    let cfg = TileConfig::new(kc);
    // Safety: every tile load reads 16 rows of kc bytes inside A's rows (or `tail`) and
    // kc/4 rows of 64 bytes inside B's panel (quads·128 bytes); every tile store writes
    // `buf`; C's rows are the caller's (qgemm_ptr's contract).
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        for p in panels {
            let bp = b.data.as_ptr().add(p * b.quads * NR * 4);
            let j0 = p * NR;
            let cols = (b.n - j0).min(NR);
            for blk in 0..blocks {
                let (a0, ld, rows) = if ragged > 0 && blk == blocks - 1 {
                    (tail.as_ptr(), k, ragged)
                } else {
                    (a.add(blk * MB * lda), lda, MB)
                };
                let a1 = a0.add(16 * ld);
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
                for q in 0..chunks {
                    let bk = bp.add(q * (kc / 4) * NR * 4);
                    asm!(
                        "tileloadd tmm4, [{a0} + {lda}*1]",
                        "tileloadd tmm5, [{a1} + {lda}*1]",
                        "tileloadd tmm6, [{b0} + {ldb}*1]",
                        "tileloadd tmm7, [{b1} + {ldb}*1]",
                        "tdpbusd tmm0, tmm4, tmm6",
                        "tdpbusd tmm1, tmm4, tmm7",
                        "tdpbusd tmm2, tmm5, tmm6",
                        "tdpbusd tmm3, tmm5, tmm7",
                        a0 = in(reg) a0.add(q * kc),
                        a1 = in(reg) a1.add(q * kc),
                        b0 = in(reg) bk,
                        b1 = in(reg) bk.add(64),
                        lda = in(reg) ld,
                        ldb = in(reg) row_bytes,
                        options(nostack, readonly)
                    );
                }
                asm!(
                    "tilestored [{o0} + {ld}*1], tmm0",
                    "tilestored [{o1} + {ld}*1], tmm1",
                    "tilestored [{o2} + {ld}*1], tmm2",
                    "tilestored [{o3} + {ld}*1], tmm3",
                    o0 = in(reg) out,
                    o1 = in(reg) out.add(64),
                    o2 = in(reg) out.add(16 * row_bytes),
                    o3 = in(reg) out.add(16 * row_bytes + 64),
                    ld = in(reg) row_bytes,
                    options(nostack)
                );
                for h in 0..cols.div_ceil(16) {
                    let r16 = Rq16::load(rq, j0 + 16 * h);
                    let n = (cols - 16 * h).min(16);
                    for r in 0..rows {
                        let i = blk * MB + r;
                        let mut acc = _mm512_load_si512(buf.0[r].as_ptr().add(16 * h).cast());
                        if row_coeff != 0 {
                            acc = _mm512_add_epi32(acc, _mm512_set1_epi32(sums[i]));
                        }
                        r16.store(acc, n, c.add(i * ldc + j0 + 16 * h));
                    }
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}
