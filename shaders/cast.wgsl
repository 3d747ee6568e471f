// Parameter casts and copies for the trainer: f32 masters (plain arrays, PyTorch layout) to and from
// fp16 tensors (rows of H·W padded to quads), and small f32 buffer operations.
//
// to_half   one invocation per quad of the destination tensor: lane e of row r is logical element
//           l = r·plane + e (padding lanes written 0) and reads fa[off + map(l)].
// to_f32    one invocation per quad of the source tensor: logical element l (lanes inside the row
//           only) is written to fout[off + map(l)]. Each invocation owns the f32 words it writes.
//           map(l) = l, or with a per-batch transpose (dst viewed as [batch, cols, rows], source
//           [batch, rows, cols]): l = b·rows·cols + j·rows + i  ->  b·rows·cols + i·cols + j.
// copy_f32  fout[doff + i] = fa[soff + i]
// add_f32   fout[i] = fa[i] + fb[i]
// fill_f32  fout[doff + i] = value

#include common
#storage hsrc 0 read
#storage hdst 1 read_write
@group(0) @binding(2) var<storage, read> fa: array<f32>;
@group(0) @binding(3) var<storage, read_write> fout: array<f32>;
@group(0) @binding(4) var<storage, read> fb: array<f32>;

struct Params {
    count: u32,     // invocations' work: quads (casts) or floats (f32 ops)
    plane: u32,     // H·W of the tensor
    row_quads: u32, // quads per row (row stride / 4)
    off: u32,       // f32 offset of the flat side (source of to_half / copy, destination of to_f32)
    off2: u32,      // destination offset of copy_f32 / fill_f32
    transpose: u32, // 1 when map() transposes
    rows: u32,
    cols: u32,
    value: f32,     // fill value
    _p0: u32, _p1: u32, _p2: u32,
}
@group(0) @binding(7) var<uniform> p: Params;

fn flat_index(l: u32) -> u32 {
    if (p.transpose == 0u) { return l; }
    let rc = p.rows * p.cols;
    let b = l / rc;
    let rem = l - b * rc;
    let j = rem / p.rows;
    let i = rem - j * p.rows;
    return b * rc + i * p.cols + j;
}

@compute @workgroup_size(64)
fn to_half(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = flat_id(gid, nwg);
    if (q >= p.count) { return; }
    let r = q / p.row_quads;
    let e0 = 4u * (q - r * p.row_quads);
    var v = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let e = e0 + k;
        if (e < p.plane) { v[k] = fa[p.off + flat_index(r * p.plane + e)]; }
    }
    hdst_st4(q, v);
}

@compute @workgroup_size(64)
fn to_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = flat_id(gid, nwg);
    if (q >= p.count) { return; }
    let r = q / p.row_quads;
    let e0 = 4u * (q - r * p.row_quads);
    let v = hsrc_ld4(q);
    for (var k = 0u; k < 4u; k++) {
        let e = e0 + k;
        if (e < p.plane) { fout[p.off + flat_index(r * p.plane + e)] = v[k]; }
    }
}

@compute @workgroup_size(64)
fn copy_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.count) { return; }
    fout[p.off2 + i] = fa[p.off + i];
}

@compute @workgroup_size(64)
fn add_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.count) { return; }
    fout[i] = fa[i] + fb[i];
}

@compute @workgroup_size(64)
fn fill_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.count) { return; }
    fout[p.off2 + i] = p.value;
}
