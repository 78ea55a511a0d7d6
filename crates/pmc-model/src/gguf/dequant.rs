//! Dequantisation of ggml's tensor types to f32, following the reference C implementations
//! in ggml's `ggml-quants.c` operation for operation, so results are bit-identical.

use half::{bf16, f16};

/// The ggml storage types this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)] // ggml's own names: Q4_K is not "Q4K"
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 32 × 4-bit, one scale.
    Q4_0,
    /// 32 × 4-bit, scale and minimum.
    Q4_1,
    /// 32 × 5-bit, one scale.
    Q5_0,
    /// 32 × 5-bit, scale and minimum.
    Q5_1,
    /// 32 × 8-bit, one scale.
    Q8_0,
    /// 256-value super-blocks of 8 × 32 4-bit values with 6-bit scales and minimums.
    Q4_K,
    /// As Q4_K with a fifth bit per value.
    Q5_K,
    /// 256-value super-blocks of 16 × 16 6-bit values with 8-bit scales.
    Q6_K,
}

impl GgmlType {
    /// The type of ggml's numeric id, if supported.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// ggml's numeric id (the inverse of [`GgmlType::from_id`]).
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::BF16 => 30,
        }
    }

    /// `(values per block, bytes per block)`.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q4_K => (256, 144),
            Self::Q5_K => (256, 176),
            Self::Q6_K => (256, 210),
        }
    }

    /// Bytes of `n` values; `None` unless `n` is a whole number of blocks.
    pub fn byte_size(self, n: usize) -> Option<usize> {
        let (values, bytes) = self.block();
        n.is_multiple_of(values).then_some(n / values * bytes)
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantises `n` values of type `ty` stored in `raw`.
pub fn dequantize(ty: GgmlType, raw: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let expected = ty
        .byte_size(n)
        .ok_or_else(|| format!("{n} values are not a whole number of {ty:?} blocks"))?;
    if raw.len() != expected {
        return Err(format!(
            "{} bytes of {ty:?} data, expected {expected}",
            raw.len()
        ));
    }
    let mut out = Vec::with_capacity(n);
    let (_, block_bytes) = ty.block();
    match ty {
        GgmlType::F32 => out.extend(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(raw.chunks_exact(2).map(|b| f16_at(b, 0))),
        GgmlType::BF16 => out.extend(
            raw.chunks_exact(2)
                .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        ),
        _ => {
            let block_fn: fn(&[u8], &mut Vec<f32>) = match ty {
                GgmlType::Q4_0 => q4_0,
                GgmlType::Q4_1 => q4_1,
                GgmlType::Q5_0 => q5_0,
                GgmlType::Q5_1 => q5_1,
                GgmlType::Q8_0 => q8_0,
                GgmlType::Q4_K => q4_k,
                GgmlType::Q5_K => q5_k,
                GgmlType::Q6_K => q6_k,
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => unreachable!("handled above"),
            };
            raw.chunks_exact(block_bytes)
                .for_each(|b| block_fn(b, &mut out));
        }
    }
    Ok(out)
}

/// `{d: f16, qs: [u8; 16]}`: x = (nibble − 8)·d; low nibbles first, then high.
fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
    out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
}

/// `{d: f16, m: f16, qs: [u8; 16]}`: x = nibble·d + m.
fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
    out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
}

/// The 5-bit values of a Q5 block: nibbles plus the high bits in `qh`.
fn q5_values(qh: u32, qs: &[u8]) -> [i32; 32] {
    let mut v = [0i32; 32];
    for j in 0..16 {
        let xh0 = ((qh >> j) << 4) & 0x10;
        let xh1 = (qh >> (j + 12)) & 0x10;
        v[j] = ((qs[j] & 0x0F) as u32 | xh0) as i32;
        v[j + 16] = ((qs[j] >> 4) as u32 | xh1) as i32;
    }
    v
}

/// `{d: f16, qh: u32, qs: [u8; 16]}`: x = (value − 16)·d.
fn q5_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    out.extend(
        q5_values(qh, &b[6..22])
            .iter()
            .map(|&v| (v - 16) as f32 * d),
    );
}

/// `{d: f16, m: f16, qh: u32, qs: [u8; 16]}`: x = value·d + m.
fn q5_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    out.extend(q5_values(qh, &b[8..24]).iter().map(|&v| v as f32 * d + m));
}

/// `{d: f16, qs: [i8; 32]}`: x = q·d.
fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
}

/// The 6-bit (scale, min) pair `j` of a K-quant's 12 packed scale bytes (`get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `{d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]}`.
fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, is) in qs.chunks_exact(32).zip((0..8).step_by(2)) {
        let (sc1, m1) = scale_min_k4(is, scales);
        let (sc2, m2) = scale_min_k4(is + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        out.extend(chunk.iter().map(|&q| d1 * (q & 0x0F) as f32 - m1));
        out.extend(chunk.iter().map(|&q| d2 * (q >> 4) as f32 - m2));
    }
}

/// `{d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]}`.
fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    let (mut u1, mut u2) = (1u8, 2u8);
    for (chunk, is) in qs.chunks_exact(32).zip((0..8).step_by(2)) {
        let (sc1, m1) = scale_min_k4(is, scales);
        let (sc2, m2) = scale_min_k4(is + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let high = |h: u8, u: u8| if h & u != 0 { 16 } else { 0 };
        out.extend(
            chunk
                .iter()
                .zip(qh)
                .map(|(&q, &h)| d1 * ((q & 0x0F) + high(h, u1)) as f32 - m1),
        );
        out.extend(
            chunk
                .iter()
                .zip(qh)
                .map(|(&q, &h)| d2 * ((q >> 4) + high(h, u2)) as f32 - m2),
        );
        u1 <<= 2;
        u2 <<= 2;
    }
}

/// `{ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16}`.
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 208);
    let start = out.len();
    out.resize(start + 256, 0.0);
    let y = &mut out[start..];
    for half in 0..2 {
        let ql = &b[half * 64..half * 64 + 64];
        let qh = &b[128 + half * 32..128 + half * 32 + 32];
        let sc = &b[192 + half * 8..192 + half * 8 + 8];
        let y = &mut y[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| sc[is + k] as i8 as f32;
            y[l] = d * s(0) * q1 as f32;
            y[l + 32] = d * s(2) * q2 as f32;
            y[l + 64] = d * s(4) * q3 as f32;
            y[l + 96] = d * s(6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_0_block() {
        let mut b = h(0.5).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!(v[0], -4.0); // (0 - 8) * 0.5
        assert_eq!(v[15], 3.5); // (15 - 8) * 0.5
        assert_eq!(v[16], 3.5); // high nibble of byte 0 = 15
        assert_eq!(v[31], -4.0);
    }

    #[test]
    fn q4_1_block() {
        let mut b = [h(0.25), h(-1.0)].concat();
        b.extend((0..16u8).map(|j| j | (3 << 4)));
        let v = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        assert_eq!(v[2], 2.0 * 0.25 - 1.0);
        assert_eq!(v[20], 3.0 * 0.25 - 1.0);
    }

    #[test]
    fn q5_0_and_q5_1_blocks() {
        // qh bit j sets the fifth bit of value j; bit j + 16 that of value j + 16.
        let qh: u32 = 1 | (1 << 17);
        let mut b = h(2.0).to_vec();
        b.extend(qh.to_le_bytes());
        b.extend([0x21u8; 16]); // low nibble 1, high nibble 2
        let v = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
        assert_eq!(v[0], (17 - 16) as f32 * 2.0);
        assert_eq!(v[1], (1 - 16) as f32 * 2.0);
        assert_eq!(v[16], (2 - 16) as f32 * 2.0);
        assert_eq!(v[17], (18 - 16) as f32 * 2.0);

        let mut b = [h(0.5), h(1.0)].concat();
        b.extend(qh.to_le_bytes());
        b.extend([0x21u8; 16]);
        let v = dequantize(GgmlType::Q5_1, &b, 32).unwrap();
        assert_eq!(v[0], 17.0 * 0.5 + 1.0);
        assert_eq!(v[17], 18.0 * 0.5 + 1.0);
    }

    #[test]
    fn q8_0_block() {
        let mut b = h(0.125).to_vec();
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(v[0], -2.0);
        assert_eq!(v[31], 15.0 * 0.125);
    }

    /// Packs eight 6-bit (scale, min) pairs the way `get_scale_min_k4` unpacks them.
    fn pack_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
        let mut q = [0u8; 12];
        for j in 0..4 {
            q[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            q[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            q[j + 8] = (sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4);
        }
        q
    }

    #[test]
    fn k_scales_round_trip() {
        let sc = [1, 2, 63, 4, 5, 33, 62, 17];
        let m = [9, 0, 3, 63, 40, 2, 1, 50];
        let q = pack_scales(sc, m);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &q), (sc[j], m[j]), "pair {j}");
        }
    }

    #[test]
    fn q4_k_block() {
        let sc = [1, 2, 3, 4, 5, 6, 7, 40];
        let m = [0, 1, 0, 2, 0, 3, 0, 33];
        let mut b = [h(0.5), h(0.25)].concat();
        b.extend(pack_scales(sc, m));
        b.extend((0..128).map(|i| ((i % 16) as u8) | (((15 - i % 16) as u8) << 4)));
        let v = dequantize(GgmlType::Q4_K, &b, 256).unwrap();
        // Sub-block 0 (low nibbles of bytes 0..32): d·1·q − dmin·0.
        assert_eq!(v[3], 0.5 * 3.0);
        // Sub-block 1 (high nibbles of bytes 0..32): d·2·(15 − q) − dmin·1.
        assert_eq!(v[32 + 3], (0.5 * 2.0) * 12.0 - 0.25);
        // Sub-block 7 (high nibbles of bytes 96..128): d·40·(15 − q) − dmin·33.
        assert_eq!(v[224 + 5], (0.5 * 40.0) * 10.0 - 0.25 * 33.0);
    }

    #[test]
    fn q5_k_block() {
        let sc = [1; 8];
        let m = [0; 8];
        let mut b = [h(1.0), h(0.0)].concat();
        b.extend(pack_scales(sc, m));
        let mut qh = [0u8; 32];
        qh[0] = 0b0000_0001 | 0b1000_0000; // value 0 (sub-block 0) and value 224 (sub-block 7)
        b.extend(qh);
        b.extend([0x32u8; 128]); // low nibble 2, high nibble 3
        let v = dequantize(GgmlType::Q5_K, &b, 256).unwrap();
        assert_eq!(v[0], 18.0);
        assert_eq!(v[1], 2.0);
        assert_eq!(v[32], 3.0);
        assert_eq!(v[224], 19.0);
        assert_eq!(v[225], 3.0);
    }

    #[test]
    fn q6_k_block() {
        let mut b = vec![0u8; 210];
        b[0] = 0x05 | (0x07 << 4); // ql[0]: value 0 low = 5, value 64 low = 7
        b[128] = 0b11_00_10_01; // qh[0]: high bits 1 (v0), 2 (v32), 0 (v64), 3 (v96)
        for (k, s) in b[192..208].iter_mut().enumerate() {
            *s = (k as i8 - 4) as u8;
        }
        b[208..210].copy_from_slice(&h(0.5));
        let v = dequantize(GgmlType::Q6_K, &b, 256).unwrap();
        let s = |k: i32| (k - 4) as f32;
        assert_eq!(v[0], 0.5 * s(0) * ((5 | (1 << 4)) - 32) as f32);
        assert_eq!(v[32], 0.5 * s(2) * ((2 << 4) - 32) as f32);
        assert_eq!(v[64], 0.5 * s(4) * (7 - 32) as f32);
        assert_eq!(v[96], 0.5 * s(6) * ((3 << 4) - 32) as f32);
        assert_eq!(v[128], 0.5 * s(8) * -32.0);
    }

    #[test]
    fn sizes_are_checked() {
        assert!(dequantize(GgmlType::Q4_0, &[0; 17], 32).is_err());
        assert!(dequantize(GgmlType::Q4_K, &[0; 144], 128).is_err());
        assert_eq!(GgmlType::from_id(99), None);
    }
}
