// Schemas of every pyops operator, in one place; each backend registers kernels with TORCH_LIBRARY_IMPL.
#include <torch/library.h>

TORCH_LIBRARY(pyops, m) {
  // Derf: y = weight * erf(alpha * x + shift) + bias, channels on `channel_dim`.
  m.def("derf_fwd(Tensor x, Tensor alpha, Tensor shift, Tensor? weight, Tensor? bias, int channel_dim) -> Tensor");
  // v_y: the gradient w.r.t. y. Returns (v_x, v_alpha, v_shift, v_weight, v_bias); absent weight/bias give empty ones.
  m.def(
      "derf_bwd(Tensor v_y, Tensor x, Tensor alpha, Tensor shift, Tensor? weight, Tensor? bias, "
      "int channel_dim) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // Nearest-code search: the k nearest rows of codebook [K, D] for each row of x [N, D] (both contiguous,
  // same floating dtype). metric: "l2" | "cosine" | "ip". Returns (distances [N, k] fp32 (fp64 for fp64
  // inputs), indices [N, k] int64), ascending, ties to the lower index. Candidates come from a search in
  // the input precision (tensor cores on GPU, tf32 for fp32 unless exact) and are re-ranked exactly in fp32.
  m.def("vq_search(Tensor x, Tensor codebook, int k, str metric, bool exact) -> (Tensor, Tensor)");
  // Segment sum for EMA codebooks: (sums [S, D], counts [S]) of the rows of values [N, D] grouped by
  // indices [N] (int64 in [0, S)); fp32 outputs (fp64 for fp64 values).
  m.def("vq_segment_sum(Tensor values, Tensor indices, int num_segments) -> (Tensor, Tensor)");
  // Prepared index (pyops.VQIndex): the per-code data a search needs, built once per codebook.
  //   stat [K] (fp32; fp64 for fp64 codebooks): ||c||^2 (l2), 1 / max(||c||, eps) (cosine), 0 (ip).
  //   packed: empty (exact fp32/fp64 scores), uint8 [ceil(K/16), ceil(D/64)*16, 16, 4] (CPU int8 tiles, q + 128,
  //   with code_scale [ceil(K/16)*16] fp32), or fp16/bf16 [K, D] (GPU 16-bit tiles; code_scale empty).
  // vq_index_pack writes the CPU int8 tiles and scales of codebook rows `rows` (int64) in place.
  m.def("vq_index_pack(Tensor codebook, Tensor rows, Tensor(a!) packed, Tensor(b!) code_scale) -> ()");
  // vq_search against a prepared index: same results contract (exact re-rank against codebook); the
  // score precision follows packed's dtype.
  m.def(
      "vq_index_search(Tensor x, Tensor codebook, Tensor packed, Tensor code_scale, Tensor stat, int k, "
      "str metric) -> (Tensor, Tensor)");

  // Gaussian splatting, gsplat's conventions and stages (pyops/reference/gaussians.py is the spec; the shared
  // host checks are in csrc/gaussians.cpp, the shared math in csrc/include/pyops/gaussians_math.h). A bad argument
  // raises TypeError (dtype) or ValueError (shape, value, index range, device).
  // Projection: means [N, 3], quats [N, 4] (wxyz, any norm), scales [N, 3], opacities [N] or None,
  // viewmats [C, 4, 4] (world-to-camera), Ks [C, 3, 3] -> (radii [C, N, 2] int32 (0: culled), means2d
  // [C, N, 2], depths [C, N], conics [C, N, 3], compensations [C, N] (ones unless antialiased)). With
  // opacities, Gaussians whose opacity (times compensation) is below 1/255 are culled and the radius uses
  // the opacity-aware extent, as gsplat's rasterization() does.
  m.def(
      "gs_project_fwd(Tensor means, Tensor quats, Tensor scales, Tensor? opacities, Tensor viewmats, Tensor Ks, "
      "int width, int height, float eps2d, float near_plane, float far_plane, float radius_clip, bool antialiased) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Returns (v_means, v_quats, v_scales); culled (camera, Gaussian) pairs contribute nothing.
  m.def(
      "gs_project_bwd(Tensor means, Tensor quats, Tensor scales, Tensor viewmats, Tensor Ks, int width, "
      "int height, float eps2d, bool antialiased, Tensor radii, Tensor conics, Tensor compensations, "
      "Tensor v_means2d, Tensor v_depths, Tensor v_conics, Tensor v_compensations) -> (Tensor, Tensor, Tensor)");
  // Spherical harmonics of `degree` (0-3): dirs [M, 3] (any norm), coeffs [M, K, 3] (K >= (degree+1)^2)
  // -> colors [M, 3] (no +0.5 offset, no clamp; the caller adds those as gsplat does).
  m.def("gs_sh_fwd(int degree, Tensor dirs, Tensor coeffs) -> Tensor");
  // Returns (v_coeffs [M, K, 3], v_dirs [M, 3]).
  m.def("gs_sh_bwd(int degree, Tensor dirs, Tensor coeffs, Tensor v_colors) -> (Tensor, Tensor)");
  // Tile intersection: one key per (camera, Gaussian, touched tile), camera | tile | depth bits, sorted.
  // Returns (tiles_per_gauss [C, N] int32, isect_ids [M] int64, flatten_ids [M] int32 = c * N + g);
  // raises when M would not fit in int32.
  m.def(
      "gs_intersect_tiles(Tensor means2d, Tensor radii, Tensor depths, int tile_size, int tile_width, "
      "int tile_height) -> (Tensor, Tensor, Tensor)");
  // First intersection of every (camera, tile) in the sorted isect_ids: [C, tile_height, tile_width] int32.
  m.def("gs_isect_offsets(Tensor isect_ids, int n_cameras, int tile_width, int tile_height) -> Tensor");
  // Front-to-back blending per tile: means2d [C, N, 2], conics [C, N, 3], colors [C, N, D],
  // opacities [C, N], backgrounds [C, D] or None; absgrad only tells autograd to also return the summed
  // |per-pixel v_means2d| (the kernels ignore it) -> (render_colors [C, H, W, D], render_alphas
  // [C, H, W, 1], last_ids [C, H, W] int32: index into flatten_ids of the last blended Gaussian, -1: none,
  // final_transmittances [C, H, W, 1]: T after the last one, which 1 - render_alphas only approximates when T
  // is small; the backward recovers every earlier T from it).
  m.def(
      "gs_rasterize_fwd(Tensor means2d, Tensor conics, Tensor colors, Tensor opacities, Tensor? backgrounds, "
      "int width, int height, int tile_size, Tensor isect_offsets, Tensor flatten_ids, bool absgrad=False) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // Back to front from last_ids (CUDA divides final_transmittances by 1 - alpha Gaussian by Gaussian; the CPU
  // replays the forward's transmittances instead). Returns (v_means2d, v_conics, v_colors, v_opacities,
  // v_backgrounds (empty without backgrounds), v_means2d_abs (|per-pixel v_means2d| summed; empty unless absgrad)).
  m.def(
      "gs_rasterize_bwd(Tensor means2d, Tensor conics, Tensor colors, Tensor opacities, Tensor? backgrounds, "
      "int width, int height, int tile_size, Tensor isect_offsets, Tensor flatten_ids, Tensor final_transmittances, "
      "Tensor last_ids, Tensor v_render_colors, Tensor v_render_alphas, bool absgrad) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // MoRel anchor ops (pyops/reference/anchors.py is the spec; host checks in csrc/anchors.cpp, math in
  // csrc/include/pyops/anchors_math.h). blend_mode: 0 "two_sided" |tau - o|, 1 "forward" max(tau - o, 0),
  // 2 "backward" max(o - tau, 0). The time is tau_t (a 0-dim tensor on the op's device) when given, else tau.
  // Blend weight: offset [M], decay [M] -> w [M] = exp(-lambda_decay * decay * dist).
  m.def(
      "anchor_blend_weight_fwd(Tensor offset, Tensor decay, Tensor? tau_t, float tau, float lambda_decay, "
      "int blend_mode) -> Tensor");
  // Returns (v_offset, v_decay); the gradient of tau_t is -sum(v_offset) (the caller forms it).
  m.def(
      "anchor_blend_weight_bwd(Tensor v_w, Tensor offset, Tensor decay, Tensor? tau_t, float tau, "
      "float lambda_decay, int blend_mode) -> (Tensor, Tensor)");
  // Scaffold-GS neural Gaussians, dense: anchors [M, 3], feats [M, C], offsets [M, K, 3], anchor_scales [M, 6]
  // (activated), cam_center [3]; per head (opacity, cov, color) nn.Linear weights w1 [H, in], b1 [H], w2 [out, H],
  // b2 [out] with in = C + 3 (+1 with the head's *_dist flag; + A appearance for color) and out = K, 7K, 3K;
  // appearance [A], opacity_scale [M], visible [M] bool, blend_offset/blend_decay [M] (both or neither: the
  // opacity is also multiplied by the blend weight). Every floating tensor has feats' dtype.
  // Returns (means [M, K, 3], quats [M, K, 4], scales [M, K, 3], opacities [M, K], colors [M, K, 3],
  // neural_opacity [M, K]).
  m.def(
      "anchor_decode_fwd(Tensor anchors, Tensor feats, Tensor offsets, Tensor anchor_scales, Tensor cam_center, "
      "Tensor w1_opacity, Tensor b1_opacity, Tensor w2_opacity, Tensor b2_opacity, "
      "Tensor w1_cov, Tensor b1_cov, Tensor w2_cov, Tensor b2_cov, "
      "Tensor w1_color, Tensor b1_color, Tensor w2_color, Tensor b2_color, "
      "Tensor? appearance, Tensor? opacity_scale, Tensor? visible, Tensor? blend_offset, Tensor? blend_decay, "
      "Tensor? tau_t, float tau, float lambda_decay, int blend_mode, bool opacity_dist, bool cov_dist, "
      "bool color_dist) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The forward's arguments after the five output gradients (neural_opacity has none); the MLP is recomputed.
  // Returns (v_anchors, v_feats, v_offsets, v_anchor_scales, v_w1_opacity, v_b1_opacity, v_w2_opacity,
  // v_b2_opacity, v_w1_cov, v_b1_cov, v_w2_cov, v_b2_cov, v_w1_color, v_b1_color, v_w2_color, v_b2_color,
  // v_appearance, v_opacity_scale, v_blend_offset, v_blend_decay); absent optional inputs give empty ones.
  m.def(
      "anchor_decode_bwd(Tensor v_means, Tensor v_quats, Tensor v_scales, Tensor v_opacities, Tensor v_colors, "
      "Tensor anchors, Tensor feats, Tensor offsets, Tensor anchor_scales, Tensor cam_center, "
      "Tensor w1_opacity, Tensor b1_opacity, Tensor w2_opacity, Tensor b2_opacity, "
      "Tensor w1_cov, Tensor b1_cov, Tensor w2_cov, Tensor b2_cov, "
      "Tensor w1_color, Tensor b1_color, Tensor w2_color, Tensor b2_color, "
      "Tensor? appearance, Tensor? opacity_scale, Tensor? visible, Tensor? blend_offset, Tensor? blend_decay, "
      "Tensor? tau_t, float tau, float lambda_decay, int blend_mode, bool opacity_dist, bool cov_dist, "
      "bool color_dist) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // HexPlane features (pyops/reference/hexplane.py is the spec; host checks in csrc/hexplane.cpp): points [N, 3],
  // times [N] or None (then every point is at time `time`: the shared-time fast path), planes: 6 * levels
  // tensors (F_l, R_b, R_a) or (1, F_l, R_b, R_a), level-major in xy xz xt yz yt zt order, aabb [2, 3]; every
  // floating tensor has points' dtype -> features [N, sum of F_l].
  m.def("hexplane_fwd(Tensor points, Tensor? times, float time, Tensor[] planes, Tensor aabb) -> Tensor");
  // Returns (v_points [N, 3], v_times [N] (empty without times), v_planes (each shaped as its plane)).
  m.def(
      "hexplane_bwd(Tensor v_features, Tensor points, Tensor? times, float time, Tensor[] planes, Tensor aabb) "
      "-> (Tensor, Tensor, Tensor[])");

  // Derf followed by a Linear: y = derf(x) @ linear_weight^T + linear_bias, x [M, C] channels last, linear_weight
  // [O, C] and linear_bias [O] in x's dtype; derf's parameters as in derf_fwd (pyops/reference/derf_linear.py).
  m.def(
      "derf_linear_fwd(Tensor x, Tensor alpha, Tensor shift, Tensor? weight, Tensor? bias, Tensor linear_weight, "
      "Tensor? linear_bias) -> Tensor");
  // derf(x) is recomputed, never saved. Returns (v_x, v_alpha, v_shift, v_weight, v_bias, v_linear_weight,
  // v_linear_bias); absent weight/bias (and linear bias unless has_linear_bias) give empty ones.
  m.def(
      "derf_linear_bwd(Tensor v_y, Tensor x, Tensor alpha, Tensor shift, Tensor? weight, Tensor? bias, "
      "Tensor linear_weight, bool has_linear_bias) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // Omni-Attribute's attribute pair loss (pyops/reference/contrastive.py: attribute_pair_loss is the spec; host
  // checks in csrc/attribute_pair.cpp, math in csrc/include/pyops/attribute_pair_math.h). ex, ey [B, A, D]
  // pooled embeddings or [B, A, L, D] tokens (same shape and dtype), logit_scale 0-d, mask [B, A, L] (bool or
  // ex's dtype; token inputs only; None: every token kept). Per pair b: cos_ij = cosine(pooled x_i, pooled
  // y_j), loss_b = logsumexp_ij(logit_scale * cos_ij) - logit_scale * cos_00. Returns (loss [B], cos [B, A, A],
  // norms [B, 2, A] (|pooled x_a|, |pooled y_a|), px, py [B, A, D] (the pooled token vectors; shape [0] for
  // pooled inputs)), all fp32 (fp64 for fp64 inputs); the last four are what the backward needs.
  m.def(
      "attribute_pair_fwd(Tensor ex, Tensor ey, Tensor logit_scale, Tensor? mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // v_loss [B]: the gradient w.r.t. loss. Returns (v_ex, v_ey (ex's shape and dtype), v_logit_scale (0-d,
  // logit_scale's dtype)); masked tokens get zero gradient.
  m.def(
      "attribute_pair_bwd(Tensor v_loss, Tensor ex, Tensor ey, Tensor logit_scale, Tensor? mask, Tensor cos, "
      "Tensor norms, Tensor px, Tensor py) -> (Tensor, Tensor, Tensor)");

  // Contrastive loss (InfoNCE / CLIP / SupCon L_out; pyops/reference/contrastive.py is the spec; host algorithm in
  // csrc/contrastive.cpp): q [N, D], k [M, D] (same floating dtype), logit_scale 0-d, qg [N], kg [M] int64
  // (S_ij = logit_scale q_i.k_j is a positive iff qg[i] == kg[j]). Returns (row_loss [N], col_loss [M], row_lse
  // [N], col_lse [M], row_npos [N], col_npos [M]) in fp32 (fp64 for fp64 inputs); a row or column without a
  // positive has loss 0; the col_* are empty (0,) when not symmetric. S is never materialised.
  m.def(
      "contrastive_fwd(Tensor q, Tensor k, Tensor logit_scale, Tensor qg, Tensor kg, bool symmetric) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // v_row [N], v_col [M] (empty when not symmetric): gradients w.r.t. row_loss and col_loss. Returns (v_q, v_k,
  // v_logit_scale) in q's, k's and logit_scale's dtypes.
  m.def(
      "contrastive_bwd(Tensor v_row, Tensor v_col, Tensor q, Tensor k, Tensor logit_scale, Tensor qg, Tensor kg, "
      "Tensor row_lse, Tensor col_lse, Tensor row_npos, Tensor col_npos, bool symmetric) -> (Tensor, Tensor, Tensor)");
}
